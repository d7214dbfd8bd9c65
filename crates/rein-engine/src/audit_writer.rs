//! The audit trail's writer thread: runs queue their records without waiting, the thread writes
//! them in batches, and a run's end (or suspension) waits for everything it queued to be written
//! and a checkpoint signed. A failed write is reported to the next run step that records.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rein_audit::{AuditLog, Entry};

enum Message {
    Append(Vec<Entry>),
    Checkpoint(u64, tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// A handle on the writer thread.
pub(crate) struct AuditWriter {
    log: Arc<AuditLog>,
    sender: Mutex<mpsc::Sender<Message>>,
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
                    // Consecutive appends go to disk together.
                    let mut batch = Vec::new();
                    for message in pending {
                        match message {
                            Message::Append(entries) => batch.extend(entries),
                            Message::Checkpoint(at_ms, done) => {
                                let mut result = Ok(());
                                if !batch.is_empty() {
                                    result = thread_log
                                        .append(&std::mem::take(&mut batch))
                                        .map(|_| ())
                                        .map_err(|e| e.to_string());
                                }
                                let result = result.and_then(|()| {
                                    thread_log
                                        .checkpoint(at_ms)
                                        .map(|_| ())
                                        .map_err(|e| e.to_string())
                                });
                                if let Err(e) = &result {
                                    fail(e.clone());
                                }
                                let _ = done.send(result);
                            }
                        }
                    }
                    if !batch.is_empty()
                        && let Err(e) = thread_log.append(&batch)
                    {
                        fail(e.to_string());
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
            sender: Mutex::new(sender),
            failed,
        }
    }

    pub(crate) fn log(&self) -> &AuditLog {
        &self.log
    }

    /// A write that failed, if one did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Queues records.
    pub(crate) fn append(&self, entries: Vec<Entry>) -> Result<(), String> {
        let sender = self
            .sender
            .lock()
            .map_err(|_| "the audit writer is poisoned".to_owned())?;
        sender
            .send(Message::Append(entries))
            .map_err(|_| "the audit writer has stopped".to_owned())
    }

    /// Waits until everything queued so far is written, then signs a checkpoint.
    pub(crate) async fn checkpoint(&self, at_ms: u64) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        {
            let sender = self
                .sender
                .lock()
                .map_err(|_| "the audit writer is poisoned".to_owned())?;
            sender
                .send(Message::Checkpoint(at_ms, done))
                .map_err(|_| "the audit writer has stopped".to_owned())?;
        }
        wait.await
            .map_err(|_| "the audit writer has stopped".to_owned())?
    }
}
