//! Live events: runs the server drives publish each event to a per-run channel (and to the
//! metrics); `GET /v1/runs/{id}/events` replays the log from a sequence number and then follows
//! the channel, reading the log again when it falls behind or when another process drives the
//! run, so a client that reconnects with `Last-Event-ID` misses nothing and sees nothing twice.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::Stream;
use rein_api::{Error, NewRun, Watch, v1};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::state::AppState;

/// Per-run channels of events, and a signal for new approval requests.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<v1::EventRecord>>>,
    /// Woken when any run the server drives asks for an approval.
    pub approvals: Notify,
}

impl Hub {
    fn sender(&self, run_id: &str) -> broadcast::Sender<v1::EventRecord> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(run_id.to_owned())
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }

    /// Listens to a run's events from now on.
    pub(crate) fn subscribe(&self, run_id: &str) -> broadcast::Receiver<v1::EventRecord> {
        self.sender(run_id).subscribe()
    }

    fn publish(&self, run_id: &str, record: &v1::EventRecord) {
        let sender = self.sender(run_id);
        let _ = sender.send(record.clone());
        // A run that ended has nothing more to say; its channel goes once nobody listens.
        if matches!(record.event, v1::Event::RunEnded { .. }) && sender.receiver_count() == 0 {
            self.channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(run_id);
        }
    }
}

/// Sees the events of one run the server drives.
struct RunWatch {
    state: Arc<AppState>,
    agent: String,
    tenant: String,
    started: Mutex<Option<oneshot::Sender<String>>>,
}

impl Watch for RunWatch {
    fn event(&self, run_id: &str, event: &v1::EventRecord) {
        if let Some(tx) = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(run_id.to_owned());
        }
        self.state
            .metrics
            .observe(&self.agent, &self.tenant, &event.event);
        self.state.hub.publish(run_id, event);
        if matches!(event.event, v1::Event::ApprovalRequested { .. }) {
            self.state.hub.approvals.notify_waiters();
        }
    }
}

/// Starts a run in the background and answers with its id once its start is recorded (or with
/// the error that kept it from starting).
pub(crate) async fn start(
    state: &Arc<AppState>,
    agent: Arc<rein_api::LoadedAgent>,
    run: NewRun,
) -> Result<String, Error> {
    let (tx, rx) = oneshot::channel();
    let (err_tx, err_rx) = oneshot::channel::<Error>();
    let watch = RunWatch {
        state: state.clone(),
        agent: agent.name().to_owned(),
        tenant: run.tenant.clone(),
        started: Mutex::new(Some(tx)),
    };
    let task_state = state.clone();
    state.spawn(async move {
        let result = task_state.rein.start_on(&agent, run, Some(&watch)).await;
        if let Err(e) = result {
            log_drive_end(&e);
            let _ = err_tx.send(e);
        }
    });
    tokio::select! {
        id = rx => id.map_err(|_| Error::Internal("the run stopped before it started".into())),
        e = err_rx => Err(e.unwrap_or_else(|_| Error::Internal("the run stopped before it started".into()))),
    }
}

fn log_drive_end(e: &Error) {
    match e {
        Error::Conflict(m) => tracing::info!(reason = %m, "a run stopped"),
        other => tracing::warn!(error = %other, "a run stopped with an error"),
    }
}

/// Resumes a run in the background (after a decision, or a restart), on its agent.
pub(crate) fn resume(state: &Arc<AppState>, run_id: String, tenant: String) {
    let task_state = state.clone();
    state.spawn(async move {
        let Ok((_, dir)) = task_state.rein.run_agent(&run_id) else {
            return;
        };
        let agent = match task_state.agents.by_dir(std::path::Path::new(&dir)).await {
            Some(a) => a,
            None => {
                tracing::warn!(run = %run_id, dir = %dir, "the run's agent is not served here; it is not resumed");
                return;
            }
        };
        let watch = RunWatch {
            state: task_state.clone(),
            agent: agent.name().to_owned(),
            tenant,
            started: Mutex::new(None),
        };
        // Another decision's resume may hold the run for a moment, and a resume that read the
        // run before a later decision suspends again: try again until the run is driven past
        // what has been decided.
        let mut pause = Duration::from_millis(50);
        for _ in 0..40 {
            if task_state.stopping() {
                return;
            }
            match task_state
                .rein
                .resume_on(&agent, &run_id, Some(&watch))
                .await
            {
                Ok(report) if report.status == v1::EndState::AwaitingApproval => {
                    let undecided = task_state
                        .rein
                        .list_approvals(false, Some(&watch.tenant))
                        .map(|list| list.iter().any(|a| a.run_id == run_id))
                        .unwrap_or(true);
                    if undecided {
                        return;
                    }
                }
                Ok(_) => return,
                Err(Error::Conflict(m)) if m.contains("lease") || m.contains("driven") || m.contains("held") => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    log_drive_end(&e);
                    return;
                }
            }
        }
    });
}

fn sse_event(record: &v1::EventRecord) -> SseEvent {
    let kind = serde_json::to_value(&record.event)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str().map(str::to_owned)))
        .unwrap_or_else(|| "event".into());
    SseEvent::default()
        .id(record.seq.to_string())
        .event(kind)
        .json_data(record)
        .unwrap_or_default()
}

struct Follow {
    state: Arc<AppState>,
    run_id: String,
    last: u64,
    backlog: std::collections::VecDeque<v1::EventRecord>,
    rx: broadcast::Receiver<v1::EventRecord>,
    done: bool,
}

impl Follow {
    /// The next event after `last`, waiting for it; `None` once the run has ended.
    async fn next(&mut self) -> Option<v1::EventRecord> {
        loop {
            if let Some(r) = self.backlog.pop_front() {
                if r.seq <= self.last {
                    continue;
                }
                return Some(r);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                got = self.rx.recv() => match got {
                    Ok(r) if r.seq == self.last + 1 => return Some(r),
                    Ok(r) if r.seq <= self.last => continue,
                    // A gap (the channel lagged, or events from before we listened): the log
                    // has them.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.reload(),
                    Err(broadcast::error::RecvError::Closed) => self.reload(),
                },
                // A run driven by another process publishes nothing here: read the log.
                () = tokio::time::sleep(Duration::from_secs(1)) => self.reload(),
            }
        }
    }

    fn reload(&mut self) {
        match self.state.rein.run_events(&self.run_id, self.last) {
            Ok(events) => self.backlog.extend(events),
            Err(_) => self.done = true,
        }
    }
}

/// The event stream of a run, from after `from`.
pub(crate) fn follow(
    state: Arc<AppState>,
    run_id: String,
    from: u64,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe before reading the log, so nothing falls between the two.
    let rx = state.hub.subscribe(&run_id);
    let mut follow = Follow {
        state,
        run_id,
        last: from,
        backlog: Default::default(),
        rx,
        done: false,
    };
    follow.reload();
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let record = f.next().await?;
        f.last = record.seq;
        if matches!(record.event, v1::Event::RunEnded { .. }) {
            f.done = true;
            f.backlog.clear();
        }
        Some((Ok(sse_event(&record)), f))
    });
    // No keep-alive comments: some clients read a comment as an event without data. A client
    // whose idle connection a proxy cuts reconnects with Last-Event-ID and misses nothing.
    Sse::new(stream)
}
