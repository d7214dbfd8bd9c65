//! Live events: runs the server drives publish each event to a per-run channel (and to the
//! metrics); `GET /v1/runs/{id}/events` replays the log from a sequence number and then follows
//! the channel, reading the log again when it falls behind or when another process drives the
//! run, so a client that reconnects with `Last-Event-ID` misses nothing and sees nothing twice.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
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
    /// Listens to a run's events from now on. The run's channel exists only while someone
    /// listens: a channel preallocates its buffer, and a server holds thousands of runs
    /// suspended that nobody follows.
    pub(crate) fn subscribe(&self, run_id: &str) -> broadcast::Receiver<v1::EventRecord> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(run_id.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Hands an event to the run's listeners, if it has any; a channel whose listeners have all
    /// gone is dropped here (under the lock `subscribe` takes, so no listener is left on a
    /// dropped channel).
    fn publish(&self, run_id: &str, record: &v1::EventRecord) {
        let sender = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            match channels.get(run_id) {
                None => return,
                Some(sender) if sender.receiver_count() == 0 => {
                    channels.remove(run_id);
                    return;
                }
                Some(sender) => sender.clone(),
            }
        };
        let _ = sender.send(record.clone());
    }

    /// Drops the run's channel if nobody listens any more (a follower went away).
    fn release(&self, run_id: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels
            .get(run_id)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            channels.remove(run_id);
        }
    }

    /// Runs with a channel now (someone follows them, or did until their last event).
    #[cfg(test)]
    fn channels(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Events a follower may fall behind by before it reads the log instead.
const CHANNEL_CAPACITY: usize = 256;

/// Sees the events of one run the server drives.
pub(crate) struct RunWatch {
    pub(crate) state: Arc<AppState>,
    pub(crate) agent: String,
    pub(crate) tenant: String,
    /// Answers the request that started the run: with its id at its first event, or with the
    /// error that kept it from starting. One channel for both, so a run that ends at once (its
    /// driver gone before the request is answered) still answers with its id.
    pub(crate) started: Starting,
}

/// Where the request that started a run waits for its answer (taken once).
type Starting = Arc<Mutex<Option<oneshot::Sender<Result<String, Error>>>>>;

impl Watch for RunWatch {
    /// Clients are told only what a crash cannot take back: a run's id once its start is
    /// durable, events once committed (so a reconnect from `Last-Event-ID` never skips one).
    fn durable(&self) -> bool {
        true
    }

    fn event(&self, run_id: &str, event: &v1::EventRecord) {
        if let Some(tx) = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(Ok(run_id.to_owned()));
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
    let started = Arc::new(Mutex::new(Some(tx)));
    let watch = RunWatch {
        state: state.clone(),
        agent: agent.name().to_owned(),
        tenant: run.tenant.clone(),
        started: started.clone(),
    };
    let task_state = state.clone();
    state.spawn(async move {
        let result = task_state.rein.start_on(&agent, run, Some(&watch)).await;
        if let Err(e) = result {
            log_drive_end(&e);
            let waiting = started.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(tx) = waiting {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.await
        .unwrap_or_else(|_| Err(Error::Internal("the run stopped before it started".into())))
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
        // A sub-agent's run goes on inside its root's: resume the root.
        let run_id = task_state.rein.root_run(&run_id).unwrap_or(run_id);
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
        // A gateway's turn held for approval is continued by its conversation's next request,
        // which hands the approved calls to the client: not here, where nobody would get them.
        if agent.is_gateway()
            && matches!(
                task_state.rein.run_status(&run_id),
                Ok(v1::RunStatus::Ended(v1::EndState::AwaitingApproval))
            )
        {
            return;
        }
        let watch = RunWatch {
            state: task_state.clone(),
            agent: agent.name().to_owned(),
            tenant,
            started: Arc::new(Mutex::new(None)),
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
                        .map(|list| {
                            list.iter().any(|a| {
                                a.run_id == run_id || a.run_id.starts_with(&format!("{run_id}-"))
                            })
                        })
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
    /// `None` only while being dropped.
    rx: Option<broadcast::Receiver<v1::EventRecord>>,
    done: bool,
    /// The follower's token, checked again every second: a revoked or expired one ends the
    /// stream.
    bearer: String,
    /// Its id: the stream holds one of the token's slots until it ends.
    token_id: String,
    /// When the token was last checked: at least every second, however busy the run.
    checked: tokio::time::Instant,
}

impl Drop for Follow {
    /// The follower's channel goes with its last listener.
    fn drop(&mut self) {
        drop(self.rx.take());
        self.state.hub.release(&self.run_id);
        self.state.close_stream(&self.token_id);
    }
}

impl Follow {
    /// The next event after `last`, waiting for it; `None` once the run has ended.
    async fn next(&mut self) -> Option<v1::EventRecord> {
        loop {
            if self.checked.elapsed() >= Duration::from_secs(1) {
                if self
                    .state
                    .rein
                    .authenticate(&self.bearer, crate::now_ms())
                    .is_err()
                {
                    return None;
                }
                self.checked = tokio::time::Instant::now();
            }
            if let Some(r) = self.backlog.pop_front() {
                if r.seq <= self.last {
                    continue;
                }
                return Some(r);
            }
            if self.done {
                return None;
            }
            let state = self.state.clone();
            let rx = self.rx.as_mut()?;
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(r) if r.seq == self.last + 1 => return Some(r),
                    Ok(r) if r.seq <= self.last => continue,
                    // A gap (the channel lagged, or events from before we listened): the log
                    // has them.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.reload(),
                    Err(broadcast::error::RecvError::Closed) => {
                        self.rx = Some(state.hub.subscribe(&self.run_id));
                        self.reload();
                    }
                },
                // A run driven by another process publishes nothing here: read the log. And the
                // token may have been revoked since the stream opened.
                () = tokio::time::sleep(Duration::from_secs(1)) => self.reload(),
                // The server is shutting down: the client reconnects to the next one.
                () = state.stopped() => return None,
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
    bearer: String,
    token_id: String,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe before reading the log, so nothing falls between the two.
    let rx = state.hub.subscribe(&run_id);
    let mut follow = Follow {
        state,
        run_id,
        last: from,
        backlog: Default::default(),
        rx: Some(rx),
        done: false,
        bearer,
        token_id,
        checked: tokio::time::Instant::now(),
    };
    follow.reload();
    // Nothing after `from` and the run is over (a client reconnecting after the end): the
    // stream ends at once rather than wait for events that will never come.
    if follow.backlog.is_empty()
        && let Ok(v1::RunStatus::Ended(end)) = follow.state.rein.run_status(&follow.run_id)
        && end != v1::EndState::AwaitingApproval
    {
        // Read again: the run may have ended (and its last events landed) after the first read.
        follow.reload();
        follow.done = follow.backlog.is_empty();
    }
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let record = f.next().await?;
        f.last = record.seq;
        if matches!(record.event, v1::Event::RunEnded { .. }) {
            f.done = true;
            f.backlog.clear();
        }
        Some((Ok(sse_event(&record)), f))
    });
    // A comment every 15 s keeps a quiet stream (a run waiting days for a person) open through
    // proxies that cut idle connections; SSE clients ignore comments. A client whose connection
    // is cut anyway reconnects with Last-Event-ID and misses nothing.
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> v1::EventRecord {
        v1::EventRecord {
            seq,
            at_ms: 0,
            event: v1::Event::RunSuspended { approvals: vec![] },
        }
    }

    /// Runs nobody follows hold no channel (a suspended run's preallocated buffer was most of a
    /// server's memory), and a channel goes once its last listener has.
    #[test]
    fn only_followed_runs_hold_a_channel() {
        let hub = Hub::default();
        for i in 0..100 {
            hub.publish(&format!("run{i}"), &record(1));
        }
        assert_eq!(hub.channels(), 0);
        let mut rx = hub.subscribe("run1");
        hub.publish("run1", &record(2));
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert_eq!(hub.channels(), 1);
        drop(rx);
        hub.publish("run1", &record(3));
        assert_eq!(hub.channels(), 0);
        // A follower that goes away takes the channel with it, with no event to wait for.
        let rx = hub.subscribe("run2");
        let second = hub.subscribe("run2");
        drop(rx);
        hub.release("run2");
        assert_eq!(hub.channels(), 1, "another follower still listens");
        drop(second);
        hub.release("run2");
        assert_eq!(hub.channels(), 0);
    }
}
