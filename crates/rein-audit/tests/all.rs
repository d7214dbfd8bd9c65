//! Audit log tests: on a log of 1,000 records with several checkpoints, every single-record
//! modification, deletion, insertion, swap and truncation is detected; the untouched log verifies;
//! proofs verify offline and fail when the record or the key is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rein_audit::{
    AuditLog, AuditOptions, Entry, InclusionProof, parse_public, prove, read_held_checkpoints,
    verify, verify_against, verify_bytes, verify_proof,
};
use serde_json::json;

const RECORDS: u64 = 1000;

fn entry(i: u64) -> Entry {
    Entry {
        at_ms: 1_700_000_000_000 + i,
        kind: if i.is_multiple_of(3) {
            "decision".into()
        } else {
            "tool_outcome".into()
        },
        run_id: Some(format!("run-{}", i / 100)),
        event: None,
        data: json!({"tool": "refunds.issue", "verdict": "allow", "n": i}).into(),
    }
}

/// A log of 1,000 records, appended in batches, with a checkpoint every 250 and at the end.
fn log_dir() -> (tempfile::TempDir, ed25519_dalek::VerifyingKey) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        dir.path(),
        AuditOptions {
            checkpoint_every: 250,
            checkpoint_interval_ms: u64::MAX,
            fsync: false,
            checkpoint_dir: Some(dir.path().join("outside")),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let mut i = 1;
    while i <= RECORDS {
        let batch: Vec<Entry> = (i..(i + 37).min(RECORDS + 1)).map(entry).collect();
        let first = log.append(&batch).unwrap();
        assert_eq!(first, i);
        i += batch.len() as u64;
    }
    log.checkpoint(1_800_000_000_000).unwrap();
    (dir, log.public_key())
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect()
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

#[test]
fn every_single_mutation_of_records_is_detected() {
    let (dir, key) = log_dir();
    let records = std::fs::read(dir.path().join("records.jsonl")).unwrap();
    let checkpoints = std::fs::read(dir.path().join("checkpoints.jsonl")).unwrap();
    let report = verify_bytes(&records, &checkpoints, &[key]).unwrap();
    assert_eq!((report.records, report.uncovered), (RECORDS, 0));
    // Appends of 37 records: checkpoints at 259, 518 and 777 records, and one at the end.
    assert_eq!(report.checkpoints, 4);
    let original = lines(&records);
    let check = |what: String, mutated: Vec<Vec<u8>>| {
        let err = verify_bytes(&join(&mutated), &checkpoints, &[key]).expect_err(&what);
        assert!(!err.to_string().is_empty(), "{what}");
    };
    for i in 0..original.len() {
        let mut m = original.clone();
        let pos = m[i].len() - 3;
        m[i][pos] ^= 0x01; // one bit of the data
        check(format!("modifying record {}", i + 1), m);

        let mut m = original.clone();
        m.remove(i);
        check(format!("deleting record {}", i + 1), m);

        let mut m = original.clone();
        m.insert(i, original[i].clone());
        check(format!("inserting a copy before record {}", i + 1), m);

        if i + 1 < original.len() {
            let mut m = original.clone();
            m.swap(i, i + 1);
            check(format!("swapping records {} and {}", i + 1, i + 2), m);
        }
        let mut m = original.clone();
        m.truncate(i);
        check(format!("truncating to {i} records"), m);
    }
    for (a, b) in [(0, 999), (10, 500), (249, 250), (400, 401), (3, 997)] {
        let mut m = original.clone();
        m.swap(a, b);
        check(format!("swapping records {} and {}", a + 1, b + 1), m);
    }
    // A record rewritten with its own seq but other data (the forgery that keeps numbering).
    let mut m = original.clone();
    m[123] = String::from_utf8(m[123].clone())
        .unwrap()
        .replace("\"allow\"", "\"deny\"")
        .into_bytes();
    let err = verify_bytes(&join(&m), &checkpoints, &[key])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("records 1..259 do not match checkpoint 1"),
        "{err}"
    );
}

#[test]
fn mutations_of_checkpoints_are_detected() {
    let (dir, key) = log_dir();
    let records = std::fs::read(dir.path().join("records.jsonl")).unwrap();
    let checkpoints = lines(&std::fs::read(dir.path().join("checkpoints.jsonl")).unwrap());
    for i in 0..checkpoints.len() {
        let mut m = checkpoints.clone();
        m.remove(i);
        if i + 1 < checkpoints.len() {
            assert!(
                verify_bytes(&records, &join(&m), &[key]).is_err(),
                "deleting checkpoint {}",
                i + 1
            );
        }
        let mut m = checkpoints.clone();
        m[i] = String::from_utf8(m[i].clone())
            .unwrap()
            .replacen("\"at_ms\":", "\"at_ms\":1", 1)
            .into_bytes();
        let err = verify_bytes(&records, &join(&m), &[key])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("checkpoint {}", i + 1)),
            "changing checkpoint {}: {err}",
            i + 1
        );
        if i + 1 < checkpoints.len() {
            let mut m = checkpoints.clone();
            m.swap(i, i + 1);
            assert!(
                verify_bytes(&records, &join(&m), &[key]).is_err(),
                "swapping checkpoints {} and {}",
                i + 1,
                i + 2
            );
        }
    }
    // Another key cannot vouch for the log.
    let other = AuditLog::open(tempfile::tempdir().unwrap().path(), AuditOptions::default())
        .unwrap()
        .public_key();
    let err = verify_bytes(&records, &join(&checkpoints), &[other])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not trusted"), "{err}");
    // The copies written outside the state directory match.
    let outside = std::fs::read_dir(dir.path().join("outside"))
        .unwrap()
        .count();
    assert_eq!(outside, checkpoints.len());
}

#[test]
fn proofs_verify_offline_and_fail_when_anything_is_wrong() {
    let (dir, key) = log_dir();
    assert!(verify(dir.path(), &[key]).is_ok());
    for seq in [1, 2, 250, 251, 777, RECORDS] {
        let proof = prove(dir.path(), seq, &[key]).unwrap();
        // Round trip through JSON: the proof is a file someone else checks.
        let proof: InclusionProof =
            serde_json::from_str(&serde_json::to_string(&proof).unwrap()).unwrap();
        verify_proof(&proof, &key).unwrap();
        assert_eq!(proof.checkpoint.tree_size, RECORDS);
        let mut forged = proof.clone();
        forged.record = forged.record.replace("\"allow\"", "\"deny\"");
        assert!(
            verify_proof(&forged, &key).is_err(),
            "a modified record fails"
        );
    }
    let proof = prove(dir.path(), 10, &[key]).unwrap();
    // A proof against a checkpoint signed by another key fails.
    let other_dir = tempfile::tempdir().unwrap();
    let other = AuditLog::open(other_dir.path(), AuditOptions::default()).unwrap();
    assert!(verify_proof(&proof, &other.public_key()).is_err());
    assert!(prove(dir.path(), RECORDS + 1, &[key]).is_err());
    assert_eq!(parse_public(&rein_audit::format_public(&key)).unwrap(), key);
}

#[test]
fn concurrent_writers_keep_one_numbered_log_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let a = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    let b = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert_eq!(a.append(&[entry(1), entry(2)]).unwrap(), 1);
    assert_eq!(
        b.append(&[entry(3)]).unwrap(),
        3,
        "the second writer continues the numbering"
    );
    assert_eq!(a.append(&[entry(4)]).unwrap(), 4);
    // A crash mid-write leaves half a line; the next append cuts it off.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("records.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"seq\":5,\"at_ms\":1,\"ki").unwrap();
    assert!(
        verify(dir.path(), &[a.public_key()])
            .unwrap_err()
            .to_string()
            .contains("incomplete line after record 4")
    );
    // Shown, the log is its whole records: the half line was never acknowledged.
    let shown = rein_audit::read_records(dir.path()).unwrap();
    assert_eq!(
        shown.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(b.append(&[entry(5)]).unwrap(), 5);
    b.checkpoint(1).unwrap();
    let report = verify(dir.path(), &[a.public_key()]).unwrap();
    assert_eq!(
        (report.records, report.checkpoints, report.uncovered),
        (5, 1, 0)
    );
}

#[test]
fn a_rotated_key_is_trusted_through_the_log_and_a_forged_rotation_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let old = {
        let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
        log.append(&[entry(1), entry(2)]).unwrap();
        log.checkpoint(10).unwrap();
        log.public_key()
    };
    let (old_id, new_id) = rein_audit::rotate_key(dir.path(), AuditOptions::default(), 20).unwrap();
    assert_ne!(old_id, new_id);
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert_eq!(rein_audit::key_id(&log.public_key()), new_id);
    log.append(&[entry(4)]).unwrap();
    log.checkpoint(30).unwrap();
    // Trusting only the original key is enough: the new key came through a signed rotation.
    let report = verify(dir.path(), &[old]).unwrap();
    assert_eq!((report.records, report.checkpoints), (4, 3));
    assert_eq!(report.keys, vec![old_id, new_id]);

    // Someone with write access forges a rotation to their own key and signs with it: refused.
    let records = std::fs::read(dir.path().join("records.jsonl")).unwrap();
    let checkpoints = std::fs::read(dir.path().join("checkpoints.jsonl")).unwrap();
    let forger_dir = tempfile::tempdir().unwrap();
    let forger = AuditLog::open(forger_dir.path(), AuditOptions::default()).unwrap();
    std::fs::write(forger_dir.path().join("records.jsonl"), &records).unwrap();
    std::fs::write(forger_dir.path().join("checkpoints.jsonl"), &checkpoints).unwrap();
    forger
        .append(&[Entry {
            at_ms: 40,
            kind: "key_rotated".into(),
            run_id: None,
            event: None,
            data: json!({"new_public_key": rein_audit::format_public(&forger.public_key())}).into(),
        }])
        .unwrap();
    forger.checkpoint(50).unwrap();
    let err = verify(forger_dir.path(), &[old]).unwrap_err().to_string();
    assert!(
        err.contains("checkpoint 4 is signed by key") && err.contains("not trusted"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_is_signed_when_enough_time_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        dir.path(),
        AuditOptions {
            checkpoint_every: 1000,
            checkpoint_interval_ms: 60_000,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let at = |ms: u64| Entry {
        at_ms: ms,
        ..entry(1)
    };
    log.append(&[at(1_000_000)]).unwrap();
    let count = || {
        std::fs::read_to_string(dir.path().join("checkpoints.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(count(), 0, "the first record starts the clock");
    log.append(&[at(1_030_000)]).unwrap();
    assert_eq!(count(), 0, "30 s later: not yet");
    log.append(&[at(1_060_000)]).unwrap();
    assert_eq!(count(), 1, "60 s after the first record: signed");
    log.append(&[at(1_090_000)]).unwrap();
    assert_eq!(count(), 1);
    log.append(&[at(1_120_000)]).unwrap();
    assert_eq!(count(), 2, "60 s after the last checkpoint: signed again");
    assert_eq!(
        verify(dir.path(), &[log.public_key()]).unwrap().uncovered,
        0
    );
}

/// A log that signs a checkpoint only when asked for one.
fn signing_only_when_asked(dir: &std::path::Path) -> AuditLog {
    AuditLog::open(
        dir,
        AuditOptions {
            checkpoint_every: u64::MAX,
            checkpoint_interval_ms: u64::MAX,
            ..AuditOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn records_and_the_checkpoint_after_them_are_written_together() {
    let dir = tempfile::tempdir().unwrap();
    let log = signing_only_when_asked(dir.path());
    // Records alone: none is due, so none is signed.
    assert!(
        log.append_and_checkpoint(&[entry(1), entry(2)], false, None)
            .unwrap()
            .is_none()
    );
    // Records with a checkpoint: it covers them all, earlier ones included.
    let signed = log
        .append_and_checkpoint(&[entry(3)], false, Some((7, false)))
        .unwrap()
        .expect("a checkpoint");
    assert_eq!((signed.tree_size, signed.at_ms), (3, 7));
    // Nothing new: nothing to sign; nothing at all: nothing done.
    assert!(
        log.append_and_checkpoint(&[], false, Some((8, false)))
            .unwrap()
            .is_none()
    );
    assert!(
        log.append_and_checkpoint(&[], false, None)
            .unwrap()
            .is_none()
    );
    let report = verify(dir.path(), &[log.public_key()]).unwrap();
    assert_eq!(
        (report.records, report.checkpoints, report.uncovered),
        (3, 1, 0)
    );
}

#[test]
fn a_checkpoints_file_replaced_between_checkpoints_gets_the_next_one() {
    // The writer keeps the checkpoints file open; a file put in its place (a restore, an editor's
    // rename) must get the next checkpoint, not the file it replaced.
    let dir = tempfile::tempdir().unwrap();
    let log = signing_only_when_asked(dir.path());
    let path = dir.path().join("checkpoints.jsonl");
    let lines = || std::fs::read_to_string(&path).unwrap().lines().count();
    log.append_and_checkpoint(&[entry(1)], false, Some((1, false)))
        .unwrap()
        .unwrap();
    let copy = dir.path().join("checkpoints.copy");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    log.append_and_checkpoint(&[entry(2)], false, Some((2, false)))
        .unwrap()
        .unwrap();
    assert_eq!(
        lines(),
        2,
        "the second checkpoint went to the replaced file"
    );
    // Removed: the next one starts a file at the path again (not in the removed one); only
    // copies held outside tell that earlier ones are gone (`verify_against`).
    std::fs::remove_file(&path).unwrap();
    log.append_and_checkpoint(&[entry(3)], false, Some((3, false)))
        .unwrap()
        .unwrap();
    assert_eq!(lines(), 1);
    assert_eq!(
        verify(dir.path(), &[log.public_key()]).unwrap().uncovered,
        0
    );
}

/// An entry recording event `event` of run `run`.
fn of_event(run: &str, event: u64) -> Entry {
    Entry {
        at_ms: 1_000 + event,
        kind: "decision".into(),
        run_id: Some(run.into()),
        event: Some(event),
        data: json!({"n": event}).into(),
    }
}

#[test]
fn an_event_is_recorded_once_whoever_records_it_and_cursors_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let a = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert_eq!(a.cursor("r").unwrap(), Some(0));
    a.append(&[of_event("r", 1), of_event("r", 2), of_event("q", 1)])
        .unwrap();
    // Another process backfills events 2..=4 while the first still has 2 and 3 queued.
    let b = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert_eq!(b.cursor("r").unwrap(), Some(2));
    b.append(&[of_event("r", 2), of_event("r", 3), of_event("r", 4)])
        .unwrap();
    assert_eq!(a.append(&[of_event("r", 3)]).unwrap(), 0, "nothing new");
    a.append(&[of_event("r", 5), of_event("q", 2)]).unwrap();
    let records = rein_audit::read_records(dir.path()).unwrap();
    let events: Vec<(String, u64)> = records
        .iter()
        .map(|r| (r.run_id.clone().unwrap(), r.event.unwrap()))
        .collect();
    let expected: Vec<(String, u64)> = [
        ("r", 1),
        ("r", 2),
        ("q", 1),
        ("r", 3),
        ("r", 4),
        ("r", 5),
        ("q", 2),
    ]
    .iter()
    .map(|(r, e)| ((*r).to_owned(), *e))
    .collect();
    assert_eq!(events, expected);
    let reopened = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert_eq!(
        (reopened.cursor("r").unwrap(), reopened.cursor("q").unwrap()),
        (Some(5), Some(2))
    );
    // Records that name no event (from before they did) mark their run as not followed.
    a.append(&[entry(7)]).unwrap();
    assert_eq!(a.cursor("run-0").unwrap(), None);
    a.checkpoint(9).unwrap();
    assert_eq!(verify(dir.path(), &[a.public_key()]).unwrap().records, 8);
}

#[test]
fn checkpoints_held_outside_catch_a_log_cut_back_with_its_checkpoints_and_a_deleted_last_checkpoint()
 {
    let (dir, key) = log_dir();
    let held = read_held_checkpoints(&dir.path().join("outside")).unwrap();
    assert_eq!(held.len(), 4);
    assert!(verify_against(dir.path(), &[key], &held).is_ok());
    let records = std::fs::read(dir.path().join("records.jsonl")).unwrap();
    let checkpoints = std::fs::read(dir.path().join("checkpoints.jsonl")).unwrap();
    let cp_lines = lines(&checkpoints);
    let rec_lines = lines(&records);

    // Cut back to checkpoint 2 (518 records), records and checkpoints together: consistent in
    // itself, so a plain verify passes; the held copies do not.
    let cut = tempfile::tempdir().unwrap();
    std::fs::write(cut.path().join("records.jsonl"), join(&rec_lines[..518])).unwrap();
    std::fs::write(cut.path().join("checkpoints.jsonl"), join(&cp_lines[..2])).unwrap();
    assert!(verify(cut.path(), &[key]).is_ok());
    let err = verify_against(cut.path(), &[key], &held)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("records but the log has 518: the log was cut back"),
        "{err}"
    );

    // Only the last checkpoint deleted: the records are all there, but checkpoint 4 is gone.
    let deleted = tempfile::tempdir().unwrap();
    std::fs::write(deleted.path().join("records.jsonl"), &records).unwrap();
    std::fs::write(
        deleted.path().join("checkpoints.jsonl"),
        join(&cp_lines[..3]),
    )
    .unwrap();
    assert!(verify(deleted.path(), &[key]).is_ok());
    let err = verify_against(deleted.path(), &[key], &held[3..])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoint 4 held outside is missing"),
        "{err}"
    );

    // A single held checkpoint, as a file, works the same way.
    let one = dir.path().join("outside/checkpoint-00000003.json");
    let held3 = read_held_checkpoints(&one).unwrap();
    assert!(verify_against(dir.path(), &[key], &held3).is_ok());
}

#[test]
fn the_signing_key_can_live_outside_the_log_and_thirty_processes_create_one_key() {
    let keys = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = AuditOptions {
        key_file: Some(keys.path().join("audit.key")),
        ..AuditOptions::default()
    };
    let log = AuditLog::open(dir.path(), options.clone()).unwrap();
    assert!(!dir.path().join("signing.key").exists());
    assert!(keys.path().join("audit.key").exists());
    log.append(&[entry(1)]).unwrap();
    log.checkpoint(1).unwrap();
    assert!(verify(dir.path(), &[log.public_key()]).is_ok());

    let fresh = tempfile::tempdir().unwrap();
    let path = fresh.path().join("audit");
    let threads: Vec<_> = (0..30)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                AuditLog::open(&path, AuditOptions::default()).map(|l| l.public_key())
            })
        })
        .collect();
    let found: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert!(
        found.iter().all(|k| *k == found[0]),
        "every opener has the one key"
    );
}

/// Two processes appending and checkpointing in turn: each chains its checkpoint to the other's
/// last one (a writer that remembered only its own would break the chain), and the log verifies.
#[test]
fn checkpoints_from_two_writers_in_turn_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    let b = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    for round in 0..6u64 {
        let (writer, other) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        writer.append(&[entry(round * 2 + 1)]).unwrap();
        let signed = writer
            .checkpoint(1_700_000_000_000 + round * 2 + 1)
            .unwrap()
            .unwrap();
        assert_eq!(signed.seq, round + 1);
        // The other one's view is stale until it looks again; its next checkpoint still chains.
        other.append(&[entry(round * 2 + 2)]).unwrap();
    }
    a.checkpoint(1_700_000_000_099).unwrap();
    let report = verify(dir.path(), &[a.public_key()]).unwrap();
    assert_eq!(
        (report.records, report.checkpoints, report.uncovered),
        (12, 7, 0)
    );
}

/// A writer keeps the cursors of the runs that have not ended and of the last that have (here
/// two): the cursor of one that ended before them is read from the file, by this log and by one
/// opened afresh; a record of a kept run written twice is written once; and every run's cursor
/// is read at once for a look at all of them.
#[test]
fn a_cursor_the_writer_forgot_is_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let options = AuditOptions {
        checkpoint_every: u64::MAX,
        checkpoint_interval_ms: u64::MAX,
        ended_cursors_kept: 2,
        ..AuditOptions::default()
    };
    let record = |run: &str, event: u64| Entry {
        at_ms: event,
        kind: if event == 3 { "run_ended" } else { "decision" }.into(),
        run_id: Some(run.into()),
        event: Some(event),
        data: json!({"n": event}).into(),
    };
    let log = AuditLog::open(dir.path(), options.clone()).unwrap();
    log.append(&[record("open", 1), record("open", 2)]).unwrap();
    for run in ["a", "b", "c", "d"] {
        log.append(&(1..=3).map(|e| record(run, e)).collect::<Vec<_>>())
            .unwrap();
    }
    for log in [&log, &AuditLog::open(dir.path(), options).unwrap()] {
        for run in ["a", "b", "c", "d"] {
            assert_eq!(log.cursor(run).unwrap(), Some(3), "{run}");
        }
        assert_eq!(log.cursor("open").unwrap(), Some(2));
        assert_eq!(log.cursor("never").unwrap(), Some(0));
        let all = log.cursors().unwrap();
        assert_eq!(
            ["a", "d", "open", "never"].map(|r| all.of(r)),
            [Some(3), Some(3), Some(2), Some(0)]
        );
    }
    assert_eq!(log.append(&[record("d", 3), record("open", 2)]).unwrap(), 0);
    let written = std::fs::read(dir.path().join("records.jsonl")).unwrap();
    assert_eq!(lines(&written).len(), 14, "nothing written twice");
}

/// The records of one run, or from a time on, are read out of a log of many runs whole and in
/// order, the others only as far as their heads; every record's head is read in order.
#[test]
fn the_records_asked_for_are_read_whole_and_in_order_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    for event in 1..=4 {
        let batch: Vec<Entry> = ["ra", "rb", "rc"]
            .iter()
            .map(|run| of_event(run, event))
            .collect();
        log.append(&batch).unwrap();
    }
    let of_rb =
        rein_audit::records_where(dir.path(), |h| h.run_id.as_deref() == Some("rb")).unwrap();
    let seen: Vec<(u64, Option<u64>, serde_json::Value)> = of_rb
        .iter()
        .map(|r| (r.seq, r.event, r.data.clone()))
        .collect();
    assert_eq!(
        seen,
        (1..=4)
            .map(|e| (3 * e - 1, Some(e), json!({"n": e})))
            .collect::<Vec<_>>()
    );
    let late = rein_audit::records_where(dir.path(), |h| h.at_ms >= 1_004).unwrap();
    assert_eq!(late.iter().map(|r| r.seq).collect::<Vec<_>>(), [10, 11, 12]);
    let mut heads = Vec::new();
    rein_audit::each_record_head(dir.path(), |h| heads.push(h.seq)).unwrap();
    assert_eq!(heads, (1..=12).collect::<Vec<_>>());
    assert_eq!(rein_audit::read_records(dir.path()).unwrap().len(), 12);
}
