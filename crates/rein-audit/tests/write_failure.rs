//! An append or a checkpoint that fails part-way (the disk full, a file-size limit) is never
//! acknowledged and leaves nothing behind, in the files or in the writer's memory: the same
//! log's next append numbers its records after the last one written, its next checkpoint
//! follows the last one signed, and the whole log verifies.
//!
//! Alone in its test binary: the failure comes from a real file-size limit (`RLIMIT_FSIZE`),
//! which holds for the whole process.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, Signal};
use rein_audit::{AuditLog, AuditOptions, Entry};
use serde_json::json;

fn entries(run: &str, events: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    events
        .map(|event| Entry {
            at_ms: 1_000 + event,
            kind: "decision".into(),
            run_id: Some(run.into()),
            event: Some(event),
            data: json!({"verdict": "allow", "padding": "x".repeat(200)}).into(),
        })
        .collect()
}

/// Runs `f` with files limited to `bytes` (a write past it fails with EFBIG; the signal it
/// raises stays blocked, pending, in this thread).
fn limited<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    let mut xfsz = SigSet::empty();
    xfsz.add(Signal::SIGXFSZ);
    xfsz.thread_block().unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
    setrlimit(Resource::RLIMIT_FSIZE, bytes, hard).unwrap();
    let out = f();
    setrlimit(Resource::RLIMIT_FSIZE, soft, hard).unwrap();
    out
}

#[test]
fn an_append_or_checkpoint_cut_short_by_a_full_disk_leaves_nothing_and_the_next_follows_the_last_written()
 {
    let dir = tempfile::tempdir().unwrap();
    let options = AuditOptions {
        // No checkpoint falls due on its own: only the records file grows.
        checkpoint_every: 1_000_000,
        checkpoint_interval_ms: u64::MAX,
        ..AuditOptions::default()
    };
    let log = AuditLog::open(dir.path(), options).unwrap();
    log.append(&entries("run-a", 1..=3)).unwrap();
    log.checkpoint(2_000).unwrap();
    let records = log.paths().records.clone();
    let written = std::fs::metadata(&records).unwrap().len();

    // The disk fills 100 bytes on: the next append's first record fits only in part.
    let failed = limited(written + 100, || log.append(&entries("run-a", 4..=6)));
    assert!(failed.is_err(), "an append past the limit succeeded");
    assert_eq!(
        std::fs::metadata(&records).unwrap().len(),
        written,
        "the part that reached the file was left in it"
    );
    // Nothing of it counts: the run's cursor is where the file has it.
    assert_eq!(log.cursor("run-a").unwrap(), Some(3));

    // The same log, the disk freed, appends after the last record written.
    let first = log.append(&entries("run-a", 4..=6)).unwrap();
    assert_eq!(first, 4);

    // A checkpoint's line cut short the same way is cut off too; the next follows the last one
    // signed.
    let checkpoints = log.paths().checkpoints.clone();
    let signed = std::fs::metadata(&checkpoints).unwrap().len();
    let failed = limited(signed + 20, || log.checkpoint(3_000));
    assert!(failed.is_err(), "a checkpoint past the limit succeeded");
    assert_eq!(std::fs::metadata(&checkpoints).unwrap().len(), signed);
    let next = log.checkpoint(3_001).unwrap().unwrap();
    assert_eq!((next.seq, next.tree_size), (2, 6));
    let report = rein_audit::verify(dir.path(), &[log.public_key()]).unwrap();
    assert_eq!((report.records, report.checkpoints), (6, 2), "{report:?}");
    let seqs: Vec<u64> = rein_audit::read_records(dir.path())
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
}
