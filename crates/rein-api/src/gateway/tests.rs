//! The gateway's own tests: what a request reads of earlier runs, and which failed resumes
//! keep a held run for later.

#![allow(clippy::unwrap_used)]

use super::held::resumable_later;
use super::kept::may_block;
use super::{ConversationKey, Lookups, RUNS_READ_PER_REQUEST};
use crate::{Options, Rein};
use rein_engine::EngineError;
use rein_store::StoreError;

fn key() -> ConversationKey {
    ConversationKey {
        tenant: "acme".into(),
        user: "ann".into(),
        agent: "gateway".into(),
        conversation: "c".into(),
    }
}

/// A history can name as many runs of rein's id form as its body holds (a 32 MiB body, some
/// 390,000 results): what one request reads of the store is bounded, not each id a read.
#[test]
fn a_history_naming_many_runs_reads_a_bounded_number_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let rein = Rein::new(Options::new(dir.path())).unwrap();
    let mut lookups = Lookups::default();
    for run in 0..1000u32 {
        for step in 0..3 {
            let id = format!("call_{step}_0_{run:032x}");
            // Not rein's hand-off to this caller: its result counts as untrusted.
            assert_eq!(
                rein.issued_tool(&key(), &id, &mut lookups).unwrap(),
                Some(String::new())
            );
        }
    }
    assert_eq!(lookups.reads, RUNS_READ_PER_REQUEST);
    assert_eq!(lookups.runs.len(), RUNS_READ_PER_REQUEST);
    // One run named again and again is read once.
    let mut lookups = Lookups::default();
    for n in 0..500 {
        let id = format!("call_1_{n}_{:032x}", 7);
        rein.issued_tool(&key(), &id, &mut lookups).unwrap();
    }
    assert_eq!(lookups.reads, 1);
    // The client's own ids are its own, and read nothing.
    assert_eq!(
        rein.issued_tool(&key(), "toolu_01abc", &mut lookups)
            .unwrap(),
        None
    );
    assert_eq!(lookups.reads, 1);
}

/// A held run another request or process is driving, or one stopped by a shutdown, waits
/// for the conversation's next request; one whose log cannot be followed is given up, or
/// every later request of its conversation would fail the same way.
#[test]
fn a_held_run_is_kept_for_later_only_when_a_later_request_could_resume_it() {
    let run_id = "0123456789abcdef0123456789abcdef".to_owned();
    let later = [
        EngineError::Store(StoreError::Leased {
            run_id: run_id.clone(),
            holder: "another".into(),
            expires_ms: 1,
        }),
        EngineError::Store(StoreError::Conflict {
            run_id: run_id.clone(),
            detail: "seq".into(),
        }),
        EngineError::Stopped {
            run_id: run_id.clone(),
        },
    ];
    for e in &later {
        assert!(resumable_later(e), "{e}");
    }
    let never = [
        EngineError::Store(StoreError::Corrupt {
            run_id: run_id.clone(),
            seq: 3,
            detail: "not JSON".into(),
        }),
        EngineError::Store(StoreError::NewerEvent {
            run_id: run_id.clone(),
            seq: 3,
            found: 9,
            supported: 1,
        }),
        EngineError::Store(StoreError::NotFound(run_id.clone())),
        EngineError::Agent("a sub-agent cannot be loaded".into()),
    ];
    for e in &never {
        assert!(!resumable_later(e), "{e}");
    }
}

/// A write that may wait hands its worker over only where that exists: on a multi-threaded
/// runtime. On a current-thread runtime (`block_in_place` would panic there) and outside
/// any runtime it simply runs.
#[test]
fn a_write_that_may_block_runs_on_every_runtime() {
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let on_multi = multi.block_on(async { tokio::spawn(async { may_block(|| 1) }).await });
    assert_eq!(on_multi.unwrap(), 1);
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(current.block_on(async { may_block(|| 2) }), 2);
    assert_eq!(may_block(|| 3), 3);
}
