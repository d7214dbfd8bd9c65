//! Reading an audit log back: its records, its checkpoints (the last one read from the end of
//! the file, which the writer also relies on), verification that recomputes every hash, link and
//! signature (against checkpoints held outside the log too), and inclusion proofs.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::AuditError;
use crate::keys;
use crate::lines::each_line;
use crate::log::{AuditPaths, Checkpoint, Record, io_err, leading_seq};
use crate::merkle::{Tree, hex, leaf_hash, unhex32, verify_consistency, verify_inclusion};

/// The checkpoints of a log with their exact lines (without the newline): what the last one,
/// read from the end, is checked against.
#[cfg(test)]
fn read_checkpoint_lines(path: &Path) -> Result<Vec<(Checkpoint, Vec<u8>)>, AuditError> {
    match std::fs::read(path) {
        Ok(b) => parse_checkpoint_lines(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The last checkpoint of a log with its exact line, read from the end of the file: a writer
/// signs a checkpoint at every run's end, so reading the whole file each time would cost more
/// with every run the log has seen.
pub(crate) fn read_last_checkpoint_line(
    path: &Path,
) -> Result<Option<(Checkpoint, Vec<u8>)>, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut window: u64 = 8192;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
        let mut tail = Vec::with_capacity((len - start) as usize);
        Read::by_ref(&mut file)
            .take(len - start)
            .read_to_end(&mut tail)
            .map_err(io_err(path))?;
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        // The last line is whole when a newline precedes it in the window, or the window
        // reaches the start of the file.
        let line = match body.iter().rposition(|b| *b == b'\n') {
            Some(at) => &body[at + 1..],
            None if start == 0 => body,
            None => {
                window = window.saturating_mul(4);
                continue;
            }
        };
        if line.is_empty() {
            return Ok(None);
        }
        let checkpoint: Checkpoint = serde_json::from_slice(line)
            .map_err(|e| AuditError::Verify(format!("the last checkpoint cannot be read ({e})")))?;
        return Ok(Some((checkpoint, line.to_vec())));
    }
}

fn parse_checkpoint_lines(bytes: &[u8]) -> Result<Vec<(Checkpoint, Vec<u8>)>, AuditError> {
    let mut out = Vec::new();
    for (i, line) in bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let checkpoint: Checkpoint = serde_json::from_slice(line).map_err(|e| {
            AuditError::Verify(format!("checkpoint line {}: cannot be read ({e})", i + 1))
        })?;
        out.push((checkpoint, line.to_vec()));
    }
    Ok(out)
}

/// Calls `each` with every record line of a log (without its newline), read a piece at a time;
/// whether the file ends in a line cut short (not passed on). A log with no records file has
/// none.
fn each_record_line(
    path: &Path,
    each: impl FnMut(&[u8]) -> Result<(), AuditError>,
) -> Result<bool, AuditError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    let len = file.metadata().map_err(io_err(path))?.len();
    Ok(each_line(&mut file, path, 0, len, each)? < len)
}

/// Calls `each` with every record line of a log parsed as a `T` (the whole record, or its
/// head), with the line itself, in order, read a piece at a time.
fn each_parsed<T: serde::de::DeserializeOwned>(
    dir: &Path,
    mut each: impl FnMut(T, &[u8]) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let mut n = 0u64;
    each_record_line(&AuditPaths::new(dir).records, |line| {
        n += 1;
        let parsed = serde_json::from_slice(line)
            .map_err(|e| AuditError::Verify(format!("record line {n}: cannot be read ({e})")))?;
        each(parsed, line)
    })?;
    Ok(())
}

/// Reads every record (for show and export).
pub fn read_records(dir: &Path) -> Result<Vec<Record>, AuditError> {
    let mut records = Vec::new();
    each_parsed(dir, |record, _| {
        records.push(record);
        Ok(())
    })?;
    Ok(records)
}

/// Reads the records whose head `keep` takes, in order: the others are read only as far as
/// their heads, and never kept (the records of one run, or since a time, out of a log of
/// millions).
pub fn records_where(
    dir: &Path,
    mut keep: impl FnMut(&RecordHead) -> bool,
) -> Result<Vec<Record>, AuditError> {
    let mut records = Vec::new();
    each_parsed(dir, |head: RecordHead, line| {
        if keep(&head) {
            let record = serde_json::from_slice(line).map_err(|e| {
                AuditError::Verify(format!("record {}: cannot be read ({e})", head.seq))
            })?;
            records.push(record);
        }
        Ok(())
    })?;
    Ok(records)
}

/// What a record says of itself, without its facts: its position, kind, run and event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordHead {
    /// Its position, from 1.
    pub seq: u64,
    /// When it happened.
    pub at_ms: u64,
    /// Its kind.
    pub kind: String,
    /// Its run.
    #[serde(default)]
    pub run_id: Option<String>,
    /// The run's event it records.
    #[serde(default)]
    pub event: Option<u64>,
}

/// Calls `each` with every record's head, in order, read a piece at a time and without keeping
/// any record's facts: for a look at a whole log (its trail against the event log) in memory of
/// what it keeps of each, rather than of every record whole.
pub fn each_record_head(dir: &Path, mut each: impl FnMut(RecordHead)) -> Result<(), AuditError> {
    each_parsed(dir, |head, _| {
        each(head);
        Ok(())
    })
}

/// What a clean verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records in the log.
    pub records: u64,
    /// Checkpoints, all valid.
    pub checkpoints: u64,
    /// Records after the last checkpoint, not yet covered by a signature.
    pub uncovered: u64,
    /// The ids of the keys that signed.
    pub keys: Vec<String>,
}

/// Recomputes the whole log from its files and checks every checkpoint against it: signatures,
/// the chain of checkpoints, tree hashes and consistency between consecutive checkpoints. Trusts
/// nothing the files say about themselves beyond what a trusted key signed. Keys rotated by
/// rein (a `key_rotated` record covered by a checkpoint of an already trusted key) become trusted.
pub fn verify(dir: &Path, trusted: &[VerifyingKey]) -> Result<VerifyReport, AuditError> {
    verify_against(dir, trusted, &[])
}

/// [`verify`], and also checks the log against checkpoints held outside it (copies taken off the
/// machine): each must be signed by a trusted key, be one of the log's own checkpoints, and match
/// the log's records. So a log cut back to an earlier checkpoint together with its checkpoints
/// file, or whose last checkpoint was deleted, fails even though it is consistent in itself.
pub fn verify_against(
    dir: &Path,
    trusted: &[VerifyingKey],
    held: &[Checkpoint],
) -> Result<VerifyReport, AuditError> {
    let (leaves, checkpoints, report) = read_and_verify(dir, trusted, |_, _| {})?;
    check_held(&leaves.tree, &checkpoints, &report, held)?;
    Ok(report)
}

/// Reads the log once, a piece at a time, and verifies it in itself: its records' leaves (all
/// that is kept of them), its checkpoints file and the report. `also` sees each record line
/// with its index (from 0) as it is read.
fn read_and_verify(
    dir: &Path,
    trusted: &[VerifyingKey],
    mut also: impl FnMut(u64, &[u8]),
) -> Result<(Leaves, Vec<u8>, VerifyReport), AuditError> {
    let paths = AuditPaths::new(dir);
    let mut leaves = Leaves::default();
    let torn = each_record_line(&paths.records, |line| {
        also(leaves.tree.len(), line);
        leaves.push(line)
    })?;
    let checkpoints = match std::fs::read(&paths.checkpoints) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(&paths.checkpoints)(e)),
    };
    let report = leaves.check(torn, &checkpoints, trusted)?;
    Ok((leaves, checkpoints, report))
}

/// Checks checkpoints held outside the log against a log that verified in itself.
fn check_held(
    tree: &Tree,
    checkpoint_bytes: &[u8],
    report: &VerifyReport,
    held: &[Checkpoint],
) -> Result<(), AuditError> {
    if held.is_empty() {
        return Ok(());
    }
    let fail = |m: String| Err(AuditError::Verify(m));
    let own = parse_checkpoint_lines(checkpoint_bytes)?;
    for cp in held {
        // Its signature was made by a key the log trusts (one of its signers).
        if !report.keys.contains(&cp.key_id) {
            return fail(format!(
                "checkpoint {} held outside is signed by key {}, which signed nothing in this log",
                cp.seq, cp.key_id
            ));
        }
        if cp.tree_size > report.records {
            return fail(format!(
                "checkpoint {} held outside covers {} records but the log has {}: the log was cut back (its records and checkpoints truncated)",
                cp.seq, cp.tree_size, report.records
            ));
        }
        match own.iter().find(|(c, _)| c.seq == cp.seq) {
            Some((c, _)) if c == cp => {}
            Some(_) => {
                return fail(format!(
                    "checkpoint {} held outside differs from the log's checkpoint {}: the log's checkpoints were rewritten",
                    cp.seq, cp.seq
                ));
            }
            None => {
                return fail(format!(
                    "checkpoint {} held outside is missing from the log, which has {} checkpoints: checkpoints were deleted",
                    cp.seq,
                    own.len()
                ));
            }
        }
    }
    // The held copies are the log's own checkpoints, which verified; their roots match its
    // records by that check. The records' tree confirms it for the newest one.
    if let Some(newest) = held.iter().max_by_key(|c| c.tree_size)
        && tree.root(newest.tree_size).map(|r| hex(&r)).as_deref() != Some(newest.root.as_str())
    {
        return fail(format!(
            "records 1..{} do not match checkpoint {} held outside",
            newest.tree_size, newest.seq
        ));
    }
    Ok(())
}

/// Reads checkpoints held outside the log: a file of one checkpoint per line (a copy of
/// `checkpoints.jsonl`, or one `--checkpoint-dir` file), or a directory of such files.
pub fn read_held_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, AuditError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "jsonl"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(io_err(&file))?;
        let parsed = parse_checkpoint_lines(&bytes).map_err(|e| {
            AuditError::Verify(format!(
                "{}: not rein audit checkpoints ({e})",
                file.display()
            ))
        })?;
        out.extend(parsed.into_iter().map(|(c, _)| c));
    }
    if out.is_empty() {
        return Err(AuditError::Verify(format!(
            "{} holds no checkpoints",
            path.display()
        )));
    }
    Ok(out)
}

/// [`verify`] over the contents of the two files.
pub fn verify_bytes(
    bytes: &[u8],
    checkpoint_bytes: &[u8],
    trusted: &[VerifyingKey],
) -> Result<VerifyReport, AuditError> {
    let torn = !bytes.is_empty() && bytes.last() != Some(&b'\n');
    // Only complete lines are records; a torn last line is reported.
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let mut leaves = Leaves::default();
    for line in bytes[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        leaves.push(line)?;
    }
    leaves.check(torn, checkpoint_bytes, trusted)
}

/// A log's records as verification keeps them, taken one line at a time: the Merkle tree of
/// their hashes, and the keys rotated in them (with the record that rotated each).
#[derive(Default)]
struct Leaves {
    tree: Tree,
    rotations: Vec<(u64, VerifyingKey)>,
}

impl Leaves {
    /// Takes the next record line: numbered the next in turn, or the log was changed.
    fn push(&mut self, line: &[u8]) -> Result<(), AuditError> {
        let fail = |m: String| Err(AuditError::Verify(m));
        let expected = self.tree.len() + 1;
        match leading_seq(line) {
            Some(seq) if seq == expected => {}
            Some(seq) => {
                return fail(format!(
                    "record {expected} (line {expected}) is numbered {seq}: records were inserted, deleted or reordered"
                ));
            }
            None => {
                return fail(format!(
                    "record {expected} (line {expected}) is not a rein audit record"
                ));
            }
        }
        if line.windows(20).any(|w| w == b"\"kind\":\"key_rotated\"") {
            let record: Record = serde_json::from_slice(line).map_err(|e| {
                AuditError::Verify(format!("record {expected}: cannot be read ({e})"))
            })?;
            if let Some(key) = record
                .data
                .get("new_public_key")
                .and_then(Value::as_str)
                .and_then(|k| keys::parse_public(k).ok())
            {
                self.rotations.push((expected, key));
            }
        }
        self.tree.push(leaf_hash(line));
        Ok(())
    }

    /// Checks every checkpoint against the records taken (whose file ended in a line cut short
    /// if `torn`).
    fn check(
        &self,
        torn: bool,
        checkpoint_bytes: &[u8],
        trusted: &[VerifyingKey],
    ) -> Result<VerifyReport, AuditError> {
        let fail = |m: String| Err(AuditError::Verify(m));
        let (tree, rotations) = (&self.tree, &self.rotations);
        if torn {
            return fail(format!(
                "the records file ends with an incomplete line after record {}",
                tree.len()
            ));
        }
        let mut trusted: Vec<VerifyingKey> = trusted.to_vec();
        let mut signers = Vec::new();
        let checkpoints = parse_checkpoint_lines(checkpoint_bytes)?;
        let mut previous: Option<(&Checkpoint, &Vec<u8>)> = None;
        for (i, (cp, line)) in checkpoints.iter().enumerate() {
            let expected = i as u64 + 1;
            if cp.seq != expected {
                return fail(format!(
                    "checkpoint {expected} is numbered {}: checkpoints were inserted, deleted or reordered",
                    cp.seq
                ));
            }
            let prev = previous
                .map(|(_, l)| hex(&Sha256::digest(l)))
                .unwrap_or_default();
            if cp.prev != prev {
                return fail(format!(
                    "checkpoint {} does not follow checkpoint {}: a checkpoint was removed, changed or reordered",
                    cp.seq,
                    cp.seq - 1
                ));
            }
            let Some(key) = trusted.iter().find(|k| keys::key_id(k) == cp.key_id) else {
                return fail(format!(
                    "checkpoint {} is signed by key {}, which is not trusted: pass its public key with --public-key",
                    cp.seq, cp.key_id
                ));
            };
            if !keys::verify(key, &cp.message(), &cp.signature) {
                return fail(format!(
                    "checkpoint {}: the signature does not match its contents; the checkpoint was changed",
                    cp.seq
                ));
            }
            if cp.tree_size > tree.len() {
                return fail(format!(
                    "checkpoint {} covers {} records but the log has {}: records were truncated or deleted",
                    cp.seq,
                    cp.tree_size,
                    tree.len()
                ));
            }
            let from = previous.map_or(0, |(p, _)| p.tree_size);
            if cp.tree_size < from {
                return fail(format!(
                    "checkpoint {} covers fewer records than checkpoint {}",
                    cp.seq,
                    cp.seq - 1
                ));
            }
            let root = tree.root(cp.tree_size).map(|r| hex(&r));
            if root.as_deref() != Some(cp.root.as_str()) {
                return fail(format!(
                    "records {}..{} do not match checkpoint {}: a record among them was changed, inserted, deleted or reordered",
                    from + 1,
                    cp.tree_size,
                    cp.seq
                ));
            }
            if let Some((p, _)) = previous.filter(|(p, _)| p.tree_size > 0) {
                let (old, new) = (unhex32(&p.root), unhex32(&cp.root));
                let proof = tree
                    .consistency_proof(p.tree_size, cp.tree_size)
                    .unwrap_or_default();
                if !matches!((old, new), (Some(o), Some(n)) if verify_consistency(p.tree_size, cp.tree_size, &o, &n, &proof))
                {
                    return fail(format!(
                        "checkpoint {} is not consistent with checkpoint {}",
                        cp.seq, p.seq
                    ));
                }
            }
            if !signers.contains(&cp.key_id) {
                signers.push(cp.key_id.clone());
            }
            // Keys rotated in records this checkpoint now covers become trusted.
            for (_, key) in rotations.iter().filter(|(seq, _)| *seq <= cp.tree_size) {
                if !trusted.iter().any(|k| k == key) {
                    trusted.push(*key);
                }
            }
            previous = Some((cp, line));
        }
        let covered = previous.map_or(0, |(c, _)| c.tree_size);
        Ok(VerifyReport {
            records: tree.len(),
            checkpoints: checkpoints.len() as u64,
            uncovered: tree.len() - covered,
            keys: signers,
        })
    }
}

/// An inclusion proof of one record in a signed checkpoint, checkable offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The record's line, exactly as logged.
    pub record: String,
    /// The record's seq.
    pub seq: u64,
    /// The audit path (hex), leaf to root.
    pub path: Vec<String>,
    /// The checkpoint the proof leads to.
    pub checkpoint: Checkpoint,
}

/// The inclusion proof of record `seq` in the latest checkpoint that covers it. The log is
/// verified first, with `trusted`.
pub fn prove(dir: &Path, seq: u64, trusted: &[VerifyingKey]) -> Result<InclusionProof, AuditError> {
    let index = seq
        .checked_sub(1)
        .ok_or_else(|| AuditError::Verify("records are numbered from 1".into()))?;
    // The log is read once: verified, with the record proved kept aside.
    let mut proved = None;
    let (leaves, checkpoints, _) = read_and_verify(dir, trusted, |i, line| {
        if i == index {
            proved = Some(line.to_vec());
        }
    })?;
    let tree = &leaves.tree;
    let checkpoint = parse_checkpoint_lines(&checkpoints)?
        .into_iter()
        .map(|(c, _)| c)
        .rfind(|c| c.tree_size >= seq)
        .ok_or_else(|| AuditError::Verify(format!("no checkpoint covers record {seq} yet")))?;
    let path = tree
        .inclusion_proof(index, checkpoint.tree_size)
        .ok_or_else(|| AuditError::Verify(format!("no record {seq}")))?;
    let record = proved.ok_or_else(|| AuditError::Verify(format!("no record {seq}")))?;
    let record = String::from_utf8(record).map_err(|e| AuditError::Format(e.to_string()))?;
    Ok(InclusionProof {
        record,
        seq,
        path: path.iter().map(|h| hex(h)).collect(),
        checkpoint,
    })
}

/// Checks a proof with nothing but the proof and the public key.
pub fn verify_proof(proof: &InclusionProof, key: &VerifyingKey) -> Result<(), AuditError> {
    let fail = |m: &str| Err(AuditError::Verify(m.to_owned()));
    let cp = &proof.checkpoint;
    if keys::key_id(key) != cp.key_id || !keys::verify(key, &cp.message(), &cp.signature) {
        return fail("the checkpoint's signature does not verify with this public key");
    }
    if leading_seq(proof.record.as_bytes()) != Some(proof.seq) {
        return fail("the record's seq is not the proof's");
    }
    let path: Option<Vec<_>> = proof.path.iter().map(|h| unhex32(h)).collect();
    let (Some(path), Some(root)) = (path, unhex32(&cp.root)) else {
        return fail("the proof holds something that is not a hash");
    };
    let leaf = leaf_hash(proof.record.as_bytes());
    if proof.seq == 0 || !verify_inclusion(proof.seq - 1, cp.tree_size, &leaf, &path, &root) {
        return fail("the record is not in the signed tree: it, or the proof, was changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Checkpoint, read_checkpoint_lines, read_last_checkpoint_line};

    fn checkpoint(seq: u64, key_id: String) -> Checkpoint {
        Checkpoint {
            seq,
            tree_size: seq * 3,
            root: "ab".repeat(32),
            at_ms: seq,
            key_id,
            prev: String::new(),
            signature: "cd".repeat(32),
        }
    }

    #[test]
    fn the_last_checkpoint_is_read_from_the_end_whatever_the_lines_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        assert_eq!(read_last_checkpoint_line(&path).unwrap(), None);
        std::fs::write(&path, "").unwrap();
        assert_eq!(read_last_checkpoint_line(&path).unwrap(), None);
        // Short lines, then lines longer than the first window read from the end.
        let mut text = String::new();
        for (seq, key_len) in [(1, 8), (2, 8), (3, 20_000), (4, 40_000)] {
            text.push_str(&serde_json::to_string(&checkpoint(seq, "k".repeat(key_len))).unwrap());
            text.push('\n');
            std::fs::write(&path, &text).unwrap();
            let all = read_checkpoint_lines(&path).unwrap();
            assert_eq!(
                read_last_checkpoint_line(&path).unwrap().as_ref(),
                all.last(),
                "after checkpoint {seq}"
            );
        }
        // A torn last line is an error, as when the whole file is read.
        std::fs::write(&path, format!("{text}{{\"seq\": 5, \"tree")).unwrap();
        assert!(read_last_checkpoint_line(&path).is_err());
    }
}
