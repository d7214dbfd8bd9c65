//! The audit trail's writer thread: records are handed to it as their events commit (from the
//! store's commit hook), it writes them in batches, and a run's end (or suspension) waits for
//! everything queued to be written and a checkpoint signed (runs that end together share one
//! signature). A failed write is reported to the next run step that records.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rein_audit::{AuditLog, Entry};

/// Answers a run waiting for a checkpoint.
pub(crate) type CheckpointDone = tokio::sync::oneshot::Sender<Result<(), String>>;

enum Message {
    Append(Vec<Entry>, bool),
    /// A checkpoint at a time, flushed to disk if asked.
    Checkpoint(u64, bool, CheckpointDone),
    /// A run's last records, and a checkpoint after them: sent by the commit hook of the append
    /// that ends (or suspends) the run, so the run waits for one hand-off, not two.
    Closing(Vec<Entry>, bool, u64, CheckpointDone),
}

/// Hands records to the writer thread; cheap to clone into commit hooks.
#[derive(Clone)]
pub(crate) struct AuditSender(mpsc::Sender<Message>);

impl AuditSender {
    /// Queues records (`fsync`: the run's durability asks for a flush to disk).
    pub(crate) fn send(&self, entries: Vec<Entry>, fsync: bool) {
        // If the thread has stopped, `failure` says why at the run's next step.
        let _ = self.0.send(Message::Append(entries, fsync));
    }

    /// Queues a run's last records and a checkpoint at `at_ms` after them; `done` is answered
    /// once both are written.
    pub(crate) fn send_closing(
        &self,
        entries: Vec<Entry>,
        fsync: bool,
        at_ms: u64,
        done: CheckpointDone,
    ) {
        // A stopped thread drops `done`, and the waiting run learns it from that.
        let _ = self.0.send(Message::Closing(entries, fsync, at_ms, done));
    }
}

/// A handle on the writer thread.
pub(crate) struct AuditWriter {
    log: Arc<AuditLog>,
    sender: AuditSender,
    failed: Arc<Mutex<Option<String>>>,
}

impl AuditWriter {
    pub(crate) fn start(log: Arc<AuditLog>) -> AuditWriter {
        let (sender, receiver) = mpsc::channel::<Message>();
        let failed = Arc::new(Mutex::new(None));
        let (thread_log, thread_failed) = (log.clone(), failed.clone());
        let spawned = std::thread::Builder::new()
            .name("rein-audit-writer".into())
            .spawn(move || {
                let fail = |e: String| {
                    if let Ok(mut f) = thread_failed.lock() {
                        f.get_or_insert(e);
                    }
                };
                while let Ok(first) = receiver.recv() {
                    let mut pending = vec![first];
                    while let Ok(next) = receiver.try_recv() {
                        pending.push(next);
                    }
                    // Everything queued goes to disk together, then one checkpoint answers
                    // every run that asked for one: it covers all their records (a waiter only
                    // needs a signed checkpoint after its own records, and this one is).
                    let mut batch = Vec::new();
                    let mut fsync = false;
                    let mut sync_checkpoint = false;
                    let mut waiting = Vec::new();
                    let mut at = 0;
                    for message in pending {
                        match message {
                            Message::Append(entries, sync) => {
                                batch.extend(entries);
                                fsync |= sync;
                            }
                            Message::Checkpoint(at_ms, sync, done) => {
                                at = at.max(at_ms);
                                sync_checkpoint |= sync;
                                waiting.push(done);
                            }
                            Message::Closing(entries, sync, at_ms, done) => {
                                batch.extend(entries);
                                fsync |= sync;
                                at = at.max(at_ms);
                                sync_checkpoint |= sync;
                                waiting.push(done);
                            }
                        }
                    }
                    let mut result = if batch.is_empty() {
                        Ok(())
                    } else {
                        thread_log
                            .append_with(&batch, fsync)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    };
                    if !waiting.is_empty() {
                        result = result.and_then(|()| {
                            thread_log
                                .checkpoint_with(at, sync_checkpoint)
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        });
                    }
                    if let Err(e) = &result {
                        fail(e.clone());
                    }
                    for done in waiting {
                        let _ = done.send(result.clone());
                    }
                }
            });
        if let Err(e) = spawned
            && let Ok(mut f) = failed.lock()
        {
            *f = Some(format!("cannot start the audit writer: {e}"));
        }
        AuditWriter {
            log,
            sender: AuditSender(sender),
            failed,
        }
    }

    pub(crate) fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// A write that failed, if one did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// A sender for commit hooks.
    pub(crate) fn sender(&self) -> AuditSender {
        self.sender.clone()
    }

    /// Waits until everything queued so far is written, then signs a checkpoint (flushed to
    /// disk, with the records, when `fsync`).
    pub(crate) async fn checkpoint(&self, at_ms: u64, fsync: bool) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.sender
            .0
            .send(Message::Checkpoint(at_ms, fsync, done))
            .map_err(|_| "the audit writer has stopped".to_owned())?;
        wait.await
            .map_err(|_| "the audit writer has stopped".to_owned())?
    }
}
