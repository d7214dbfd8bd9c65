//! The checkpointer: a thread of its own that copies the write-ahead log into the database when
//! the writer asks, and holds the writer just long enough for the log to start over once it has
//! grown past [`CATCH_UP_FRAMES`]; and the pause tests use to stand in for one that falls behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// Keeps the checkpointer from starting a checkpoint while set.
#[derive(Debug, Default)]
pub(super) struct Paused {
    on: Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Paused {
    pub(super) fn set(&self, on: bool) {
        *self.on.lock().unwrap_or_else(|p| p.into_inner()) = on;
        self.changed.notify_all();
    }

    /// Returns once checkpoints are not paused.
    fn wait(&self) {
        let on = self.on.lock().unwrap_or_else(|p| p.into_inner());
        drop(
            self.changed
                .wait_while(on, |on| *on)
                .unwrap_or_else(|p| p.into_inner()),
        );
    }
}

/// Checkpoints paused until dropped (see [`SqliteStore::pause_checkpoints`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct CheckpointsPaused(pub(super) Arc<Paused>);

impl Drop for CheckpointsPaused {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Past this many frames (about 16 MiB of 4 KiB pages), the log is made to start over: a
/// checkpoint is finished with the writer held, for as long as it takes to copy what was written
/// meanwhile and flush the database and the log to disk (a few milliseconds, two fsyncs). The
/// requests in flight then wait. At 1000 frames (SQLite's own automatic checkpoint size) every
/// pass did, then one per 1000 events (about 2000 frames: a hundred gateway requests, of about
/// 20 frames each), so about one request in a hundred waited, and that wait made the p99 of
/// `rein bench gateway` at one request at a time: 8.4-8.6 ms, against 3.9-4.1 ms with at most
/// one wait per 4000 frames (for 12 MiB more of log on disk).
pub(super) const CATCH_UP_FRAMES: i64 = 4000;

/// The write-ahead log of the database at `db` (`rein.db-wal`).
pub(super) fn log_path(db: &Path) -> PathBuf {
    db.with_extension("db-wal")
}

/// Copies the write-ahead log into the database each time the writer asks (a passive
/// checkpoint: it never waits for readers or the writer, and what it cannot copy now it copies
/// next time); ends with the writer.
///
/// The log starts over from its beginning only when the writer begins a transaction with all of
/// it copied, which a writer that never stops (a busy gateway) rarely finds: it commits more
/// while each checkpoint copies, and the log grows with everything ever written. So once the log
/// is past [`CATCH_UP_FRAMES`], what was written while the checkpoint copied is copied again
/// while the writer waits at `gate` (a few frames), and the writer's next commit starts the log
/// over.
///
/// While [`SqliteStore::pause_checkpoints`] holds `paused`, no checkpoint starts: it stands in
/// for a checkpointer that falls behind (a starved thread on a loaded machine), for which the
/// writer then caps the log itself.
pub(super) fn checkpoint_loop(
    conn: Connection,
    wanted: mpsc::Receiver<()>,
    gate: Arc<Mutex<()>>,
    paused: Arc<Paused>,
    restarts: Arc<AtomicBool>,
) {
    // (frames in the log, frames copied into the database)
    let passive = |conn: &Connection| {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
    };
    // Every frame copied: the writer's next commit may start the log over.
    let copied_all = |pass: &rusqlite::Result<(i64, i64)>| {
        if let Ok((log, copied)) = pass
            && *log > 0
            && copied >= log
        {
            restarts.store(true, Ordering::Relaxed);
        }
    };
    while wanted.recv().is_ok() {
        paused.wait();
        // A busy or failed checkpoint leaves the log to grow until the next one; nothing is lost.
        let pass = passive(&conn);
        copied_all(&pass);
        if let Ok((log, _)) = pass
            && log >= CATCH_UP_FRAMES
        {
            let _writer_waits = gate.lock().unwrap_or_else(|p| p.into_inner());
            copied_all(&passive(&conn));
        }
    }
}
