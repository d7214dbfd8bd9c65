//! The audit log on disk: `records.jsonl` (one canonical JSON record per line, numbered from 1)
//! and `checkpoints.jsonl` (signed tree heads, each naming the hash of the one before), in a
//! directory of its own. Any number of processes append; a file lock orders them.
//!
//! A record may name the event it comes from (its run and the event's sequence number). The log
//! keeps, per run, the last event recorded (its cursor): a record for an event at or before the
//! cursor is not written again, so whoever fills in what a crash left out, and a writer whose
//! records were queued at the time, never record an event twice.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::AuditError;
use crate::cursors::{AllCursors, Cursors, Known, RUN_ENDED, ends_run};
use crate::keys;
use crate::lines::each_line;
use crate::merkle::{Frontier, hex, leaf_hash};
use crate::verify::read_last_checkpoint_line;

/// What a record says, before it has a place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When it happened (ms since the epoch).
    pub at_ms: u64,
    /// What kind of record: `run_started`, `decision`, `approval_decided`, `model_call`, ...
    pub kind: String,
    /// The run it belongs to, if any.
    pub run_id: Option<String>,
    /// The run's event it records (its sequence number in the run's log), if it records one.
    pub event: Option<u64>,
    /// The facts, as JSON.
    pub data: Data,
}

/// A record's facts, as the JSON text written into it: made once, by whoever knows their shape
/// (straight from typed values with [`Data::of`], or from a JSON value), and written as they are.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Data(Box<RawValue>);

impl Data {
    /// The facts `value` serializes to. (A value that cannot be written as JSON, a map with keys
    /// that are not strings, gives a record saying so rather than no record.)
    pub fn of(value: &impl Serialize) -> Data {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Data(raw),
            Err(e) => Data::from(serde_json::json!({ "unwritable": e.to_string() })),
        }
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The facts as a JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl From<Value> for Data {
    fn from(value: Value) -> Data {
        Data::of(&value)
    }
}

/// The same facts, however they were written (two texts of one value compare equal).
impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        self.get() == other.get() || self.value() == other.value()
    }
}

#[derive(Serialize)]
struct RecordLine<'a> {
    seq: u64,
    at_ms: u64,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<u64>,
    data: &'a Data,
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its position, from 1.
    pub seq: u64,
    /// When it happened.
    pub at_ms: u64,
    /// Its kind.
    pub kind: String,
    /// Its run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The run's event it records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<u64>,
    /// Its facts.
    pub data: Value,
}

/// A signed tree head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its position among checkpoints, from 1.
    pub seq: u64,
    /// How many records it covers.
    pub tree_size: u64,
    /// The Merkle tree hash of those records (hex).
    pub root: String,
    /// When it was signed.
    pub at_ms: u64,
    /// The signing key's id.
    pub key_id: String,
    /// SHA-256 (hex) of the previous checkpoint's line; empty for the first.
    pub prev: String,
    /// Ed25519 signature (hex) over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The bytes that are signed.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "rein-audit-checkpoint/v1\n{}\n{}\n{}\n{}\n{}\n{}",
            self.seq, self.tree_size, self.root, self.at_ms, self.key_id, self.prev
        )
        .into_bytes()
    }
}

/// How a log is written.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Sign a checkpoint after this many records without one.
    pub checkpoint_every: u64,
    /// Or once this many milliseconds have passed since the last checkpoint (measured on the
    /// records' own times), whichever comes first.
    pub checkpoint_interval_ms: u64,
    /// Flush to disk at every append (survives power loss).
    pub fsync: bool,
    /// Also write each checkpoint to this directory (so a copy can leave the machine).
    pub checkpoint_dir: Option<PathBuf>,
    /// The signing key's file, when it lives outside the log's directory (mode 0600).
    pub key_file: Option<PathBuf>,
    /// How many ended runs' audit cursors a writer keeps in memory (those of runs not ended are
    /// all kept); one it forgot is read from the file when asked for. See [`AuditLog::cursor`].
    pub ended_cursors_kept: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            checkpoint_every: 1000,
            checkpoint_interval_ms: 60_000,
            fsync: false,
            checkpoint_dir: None,
            key_file: None,
            ended_cursors_kept: crate::cursors::ENDED_KEPT,
        }
    }
}

/// The files of a log directory.
#[derive(Debug, Clone)]
pub struct AuditPaths {
    /// The directory.
    pub dir: PathBuf,
    /// `records.jsonl`.
    pub records: PathBuf,
    /// `checkpoints.jsonl`.
    pub checkpoints: PathBuf,
    /// `signing.key` (mode 0600).
    pub key: PathBuf,
    lock: PathBuf,
}

impl AuditPaths {
    /// The files under `dir`.
    pub fn new(dir: &Path) -> AuditPaths {
        AuditPaths {
            dir: dir.to_owned(),
            records: dir.join("records.jsonl"),
            checkpoints: dir.join("checkpoints.jsonl"),
            key: dir.join("signing.key"),
            lock: dir.join("lock"),
        }
    }
}

/// What one process knows of the log's end; re-synchronised under the lock before each write.
#[derive(Default)]
struct WriterState {
    records_len: u64,
    frontier: Frontier,
    /// The records file, kept open for appending.
    records: Option<File>,
    /// The lock file, kept open.
    lock: Option<File>,
    /// The runs' audit cursors, as far as read (of runs that have not ended, and of the last
    /// that have).
    cursors: Cursors,
    /// The checkpoints file's length and its last checkpoint's tree size, as last read.
    checkpoints_len: u64,
    /// The file at the checkpoints path as last looked at (its inode), and the checkpoints file
    /// kept open for appending with its inode: reused while the path still names it.
    checkpoints_at: Option<u64>,
    checkpoints_file: Option<(File, Option<u64>)>,
    checkpointed: u64,
    checkpointed_at_ms: u64,
    /// Whether the checkpoints file has been read since the log was opened (or reset).
    checkpoints_read: bool,
    /// The last checkpoint's seq and the hash of its line (the next one's `prev`), while the
    /// file is `checkpoints_len` long: a checkpoint is chained without reading the file back.
    last_checkpoint: Option<(u64, String)>,
}

/// An open log that appends records and signs checkpoints.
pub struct AuditLog {
    paths: AuditPaths,
    redaction_key: [u8; 32],
    key: SigningKey,
    key_id: String,
    options: AuditOptions,
    state: Mutex<WriterState>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.paths.dir)
            .field("key_id", &self.key_id)
            .finish()
    }
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The run and event a record line names, read without parsing the whole line: records are
/// written with `run_id` and `event` right after `kind`. A record of a run that names no event
/// (written before records named their events) gives `(run, None)`.
pub(crate) fn event_ref(line: &[u8]) -> Option<(String, Option<u64>)> {
    const RUN: &[u8] = b"\"run_id\":\"";
    const EVENT: &[u8] = b"\",\"event\":";
    let at = line.windows(RUN.len()).position(|w| w == RUN)? + RUN.len();
    let rest = &line[at..];
    let end = rest.iter().position(|b| *b == b'"' || *b == b'\\')?;
    let run = std::str::from_utf8(&rest[..end]).ok()?.to_owned();
    let Some(after) = rest[end..].strip_prefix(EVENT) else {
        return Some((run, None));
    };
    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
    let event = std::str::from_utf8(&after[..digits]).ok()?.parse().ok()?;
    Some((run, Some(event)))
}

/// A file's inode, where the platform has them: what tells whether a path still names a file
/// that is held open.
fn inode(meta: &std::fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Parses the `seq` a record line starts with, without reading the rest.
pub(crate) fn leading_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, with its signing key.
    pub fn open(dir: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut paths = AuditPaths::new(dir);
        if let Some(file) = &options.key_file {
            paths.key = file.clone();
        }
        let key = keys::load_or_create(&paths.key)?;
        let key_id = keys::key_id(&key.verifying_key());
        let redaction_key = keys::load_or_create(&dir.join("redaction.key"))?.to_bytes();
        Ok(AuditLog {
            paths,
            redaction_key,
            key,
            key_id,
            options,
            state: Mutex::new(WriterState::default()),
        })
    }

    /// A keyed hash of a sensitive value (BLAKE3 with this log's redaction key, mode 0600):
    /// equal values give equal hashes, so records stay comparable, but the value cannot be
    /// recovered or guessed without the key.
    pub fn keyed_hash(&self, value: &[u8]) -> String {
        format!(
            "blake3:{}",
            hex(blake3::keyed_hash(&self.redaction_key, value).as_bytes())
        )
    }

    /// The public key checkpoints are signed with.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The files.
    pub fn paths(&self) -> &AuditPaths {
        &self.paths
    }

    /// Runs `f` holding the log's file lock (ordering writers across processes), with the records
    /// file. Both files stay open between calls; they are moved out of the state while `f` runs
    /// (no duplicate handles per write) and put back after, so a state reset inside `f` (a log
    /// found cut short) neither closes the lock nor loses the files.
    fn locked<T>(
        &self,
        f: impl FnOnce(&mut WriterState, &mut File) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.lock.is_none() {
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.paths.lock)
                .map_err(io_err(&self.paths.lock))?;
            state.lock = Some(lock);
        }
        if state.records.is_none() {
            let path = &self.paths.records;
            let records = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .map_err(io_err(path))?;
            state.records = Some(records);
        }
        let (Some(lock), Some(mut records)) = (state.lock.take(), state.records.take()) else {
            return Err(AuditError::Format("the log's files are not open".into()));
        };
        let result = lock
            .lock()
            .map_err(io_err(&self.paths.lock))
            .and_then(|()| {
                let result = f(&mut state, &mut records);
                let _ = lock.unlock();
                result
            });
        state.lock = Some(lock);
        state.records = Some(records);
        result
    }

    /// Brings this process's view up to the file's end (other processes may have appended), and
    /// cuts off a torn last line left by a crash mid-write (it was never acknowledged).
    fn catch_up(&self, state: &mut WriterState, file: &mut File) -> Result<(), AuditError> {
        let path = &self.paths.records;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len == state.records_len {
            return Ok(());
        }
        if len < state.records_len {
            *state = WriterState::default();
        }
        let kept = self.options.ended_cursors_kept;
        let (frontier, cursors) = (&mut state.frontier, &mut state.cursors);
        let unread = len - state.records_len;
        let complete = each_line(file, path, state.records_len, unread, |line| {
            frontier.push(leaf_hash(line));
            match event_ref(line) {
                Some((run, Some(event))) => {
                    cursors.advance(&run, event, ends_run(line), kept);
                }
                Some((run, None)) => cursors.legacy(&run),
                None => {}
            }
            Ok(())
        })?;
        if complete < unread {
            file.set_len(state.records_len + complete)
                .map_err(io_err(path))?;
        }
        state.records_len += complete;
        Ok(())
    }

    /// Appends records; returns the seq of the first written (0 if none was). Records of events
    /// already in the log are skipped. Signs a checkpoint when enough records have gone without
    /// one.
    pub fn append(&self, entries: &[Entry]) -> Result<u64, AuditError> {
        self.append_with(entries, self.options.fsync)
    }

    /// [`AuditLog::append`], flushing to disk before it returns when `fsync` (a run whose
    /// durability asks for it).
    pub fn append_with(&self, entries: &[Entry], fsync: bool) -> Result<u64, AuditError> {
        if entries.is_empty() {
            return Ok(0);
        }
        self.locked(|state, file| self.append_locked(state, file, entries, fsync))
    }

    /// The last event of `run_id` the log holds a record of (0 if none): the run's audit cursor.
    /// `None` for a run whose records predate records naming their events: its trail cannot be
    /// followed event by event.
    pub fn cursor(&self, run_id: &str) -> Result<Option<u64>, AuditError> {
        self.locked(|state, file| {
            self.catch_up(state, file)?;
            match state.cursors.of(run_id) {
                Known::At(at) => Ok(Some(at)),
                Known::Legacy => Ok(None),
                Known::Unknown { forgotten: false } => Ok(Some(0)),
                // A run that ended long ago: read from the file.
                Known::Unknown { forgotten: true } => {
                    Ok(self.read_cursors(state, file)?.of(run_id))
                }
            }
        })
    }

    /// Every run's audit cursor, read from the whole log at once: for a look at every run (the
    /// writer keeps only those of runs that have not ended, and of the last that have).
    pub fn cursors(&self) -> Result<AllCursors, AuditError> {
        self.locked(|state, file| {
            self.catch_up(state, file)?;
            self.read_cursors(state, file)
        })
    }

    /// The cursors in the records file's first `records_len` bytes (what has been caught up).
    fn read_cursors(&self, state: &WriterState, file: &mut File) -> Result<AllCursors, AuditError> {
        let mut all = AllCursors::default();
        each_line(file, &self.paths.records, 0, state.records_len, |line| {
            all.note(line);
            Ok(())
        })?;
        Ok(all)
    }

    fn append_locked(
        &self,
        state: &mut WriterState,
        file: &mut File,
        entries: &[Entry],
        fsync: bool,
    ) -> Result<u64, AuditError> {
        let path = &self.paths.records;
        self.catch_up(state, file)?;
        let first = state.frontier.size() + 1;
        let mut buf = Vec::with_capacity(entries.len() * 256);
        let mut seq = first;
        for entry in entries {
            match (&entry.run_id, entry.event) {
                (Some(run), Some(event)) => {
                    let (ends, kept) = (entry.kind == RUN_ENDED, self.options.ended_cursors_kept);
                    if !state.cursors.advance(run, event, ends, kept) {
                        continue;
                    }
                }
                (Some(run), None) => state.cursors.legacy(run),
                _ => {}
            }
            let start = buf.len();
            let line = RecordLine {
                seq,
                at_ms: entry.at_ms,
                kind: &entry.kind,
                run_id: entry.run_id.as_deref(),
                event: entry.event,
                data: &entry.data,
            };
            serde_json::to_writer(&mut buf, &line)
                .map_err(|e| AuditError::Format(e.to_string()))?;
            state.frontier.push(leaf_hash(&buf[start..]));
            buf.push(b'\n');
            seq += 1;
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let written = file
            .write_all(&buf)
            .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Never acknowledged: what reached the file is cut off (this process holds the
            // lock), and what this append counted in memory (the tree, the runs' cursors) is
            // dropped, so the next append reads the file again rather than numbering its
            // records after ones that are not there.
            let _ = file.set_len(state.records_len);
            *state = WriterState::default();
            return Err(io_err(path)(e));
        }
        state.records_len += buf.len() as u64;
        if !state.checkpoints_read {
            self.sync_checkpointed(state)?;
        }
        let at = entries.last().map_or(0, |e| e.at_ms);
        if state.checkpointed_at_ms == 0 {
            // No checkpoint yet: the interval runs from the first record.
            state.checkpointed_at_ms = entries.first().map_or(at, |e| e.at_ms);
        }
        let due = |state: &WriterState| {
            state.frontier.size() - state.checkpointed >= self.options.checkpoint_every
                || at.saturating_sub(state.checkpointed_at_ms)
                    >= self.options.checkpoint_interval_ms
        };
        // Another process's checkpoint only makes one less due, so the file is looked at only
        // when what this process knows says one is due.
        if due(state) {
            self.sync_checkpointed(state)?;
            if due(state) {
                self.write_checkpoint(state, at, fsync)?;
            }
        }
        Ok(first)
    }

    /// Re-reads the last checkpoint if the checkpoints file changed since last time.
    fn sync_checkpointed(&self, state: &mut WriterState) -> Result<(), AuditError> {
        let meta = std::fs::metadata(&self.paths.checkpoints).ok();
        let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
        state.checkpoints_at = meta.as_ref().and_then(inode);
        if len != state.checkpoints_len || !state.checkpoints_read {
            let last = read_last_checkpoint_line(&self.paths.checkpoints)?;
            state.checkpointed = last.as_ref().map_or(0, |(c, _)| c.tree_size);
            state.checkpointed_at_ms = last.as_ref().map_or(0, |(c, _)| c.at_ms);
            state.last_checkpoint = last.map(|(c, line)| (c.seq, hex(&Sha256::digest(&line))));
            state.checkpoints_len = len;
            state.checkpoints_read = true;
        }
        Ok(())
    }

    /// Signs a checkpoint over every record so far, unless the last one already covers them;
    /// flushed to disk as the log's options say.
    pub fn checkpoint(&self, at_ms: u64) -> Result<Option<Checkpoint>, AuditError> {
        self.checkpoint_with(at_ms, self.options.fsync)
    }

    /// [`AuditLog::checkpoint`], flushed to disk (the records it covers first) when `fsync`: a
    /// run whose durability asks for it. Without, the checkpoint survives what the records do (a
    /// crash of the process, not of the machine): a checkpoint on disk over records that a power
    /// loss took would read as a truncated log.
    pub fn checkpoint_with(
        &self,
        at_ms: u64,
        fsync: bool,
    ) -> Result<Option<Checkpoint>, AuditError> {
        self.locked(|state, file| {
            self.catch_up(state, file)?;
            self.checkpoint_locked(state, file, at_ms, fsync)
        })
    }

    /// [`AuditLog::append_with`], then (when `checkpoint` names a time and whether to flush)
    /// [`AuditLog::checkpoint_with`], under one hold of the log's lock: a writer that ends runs
    /// takes the lock once per batch, not twice.
    pub fn append_and_checkpoint(
        &self,
        entries: &[Entry],
        fsync: bool,
        checkpoint: Option<(u64, bool)>,
    ) -> Result<Option<Checkpoint>, AuditError> {
        if entries.is_empty() && checkpoint.is_none() {
            return Ok(None);
        }
        self.locked(|state, file| {
            // Appending catches up with the file first; without records, the checkpoint does.
            if entries.is_empty() {
                self.catch_up(state, file)?;
            } else {
                self.append_locked(state, file, entries, fsync)?;
            }
            match checkpoint {
                Some((at_ms, sync)) => self.checkpoint_locked(state, file, at_ms, sync),
                None => Ok(None),
            }
        })
    }

    /// Signs a checkpoint over the records so far (the caller has caught up with the file).
    fn checkpoint_locked(
        &self,
        state: &mut WriterState,
        file: &mut File,
        at_ms: u64,
        fsync: bool,
    ) -> Result<Option<Checkpoint>, AuditError> {
        self.sync_checkpointed(state)?;
        if state.frontier.size() == 0 || state.checkpointed == state.frontier.size() {
            return Ok(None);
        }
        if fsync {
            file.sync_data().map_err(io_err(&self.paths.records))?;
        }
        self.write_checkpoint(state, at_ms, fsync).map(Some)
    }

    /// Signs and appends a checkpoint over the records so far, chained to the last one. Called
    /// under the lock right after [`AuditLog::sync_checkpointed`], so the state knows the file.
    fn write_checkpoint(
        &self,
        state: &mut WriterState,
        at_ms: u64,
        fsync: bool,
    ) -> Result<Checkpoint, AuditError> {
        let (seq, prev) = match &state.last_checkpoint {
            Some((seq, line_hash)) => (seq + 1, line_hash.clone()),
            None => (1, String::new()),
        };
        let frontier = &state.frontier;
        let mut checkpoint = Checkpoint {
            seq,
            tree_size: frontier.size(),
            root: hex(&frontier.root()),
            at_ms,
            key_id: self.key_id.clone(),
            prev,
            signature: String::new(),
        };
        checkpoint.signature = keys::sign(&self.key, &checkpoint.message());
        let mut line =
            serde_json::to_vec(&checkpoint).map_err(|e| AuditError::Format(e.to_string()))?;
        line.push(b'\n');
        let path = &self.paths.checkpoints;
        // The file kept open is used while the path still names it (the caller has just looked);
        // otherwise (none yet, replaced, removed) the path is opened again.
        let file = match &mut state.checkpoints_file {
            Some((file, held)) if held.is_some() && *held == state.checkpoints_at => file,
            kept => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                let held = file.metadata().ok().as_ref().and_then(inode);
                &mut kept.insert((file, held)).0
            }
        };
        let written = file
            .write_all(&line)
            .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Never acknowledged: a torn line would leave the file's last checkpoint unreadable
            // and every later one refused. What reached the file is cut off (the caller has
            // just read its length, under the lock), and the file is read again next time.
            let _ = file.set_len(state.checkpoints_len);
            state.checkpoints_read = false;
            return Err(io_err(path)(e));
        }
        state.checkpointed = checkpoint.tree_size;
        state.checkpointed_at_ms = checkpoint.at_ms;
        state.checkpoints_len += line.len() as u64;
        let whole = line.strip_suffix(b"\n").unwrap_or(&line);
        state.last_checkpoint = Some((seq, hex(&Sha256::digest(whole))));
        if let Some(dir) = &self.options.checkpoint_dir {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            let copy = dir.join(format!("checkpoint-{seq:08}.json"));
            std::fs::write(&copy, &line).map_err(io_err(&copy))?;
        }
        Ok(checkpoint)
    }
}

/// Replaces the signing key. The change is itself audited: a `key_rotated` record naming the new
/// public key is appended and covered by a checkpoint signed with the old key, so whoever trusts
/// the old key learns the new one from the log. Returns (old key id, new key id).
pub fn rotate_key(
    dir: &Path,
    options: AuditOptions,
    at_ms: u64,
) -> Result<(String, String), AuditError> {
    let log = AuditLog::open(dir, options)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| AuditError::Key(format!("no randomness for a new key: {e}")))?;
    let new = SigningKey::from_bytes(&seed);
    let new_id = keys::key_id(&new.verifying_key());
    log.append(&[Entry {
        at_ms,
        kind: "key_rotated".into(),
        run_id: None,
        event: None,
        data: serde_json::json!({"old_key_id": log.key_id, "new_key_id": new_id, "new_public_key": keys::format_public(&new.verifying_key())}).into(),
    }])?;
    // On disk before the key it was signed with is replaced.
    log.checkpoint_with(at_ms, true)?;
    let tmp = log.paths.key.with_extension("key.new");
    let _ = std::fs::remove_file(&tmp);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(format!("{}\n", hex(&seed)).as_bytes())
            .map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, &log.paths.key).map_err(io_err(&log.paths.key))?;
    Ok((log.key_id.clone(), new_id))
}
