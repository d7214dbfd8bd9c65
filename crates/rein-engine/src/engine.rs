//! The [`Engine`]: starts, resumes, cancels and settles runs against a store and an audit trail,
//! each under the run's lease, and fills in audit records a crash left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rein_audit::AuditLog;
use rein_core::secrets::Redactor;
use rein_core::{BoxFuture, Clock, Durability, EndState, Event, RunState, StoredEvent};
use rein_store::{ApprovalSummary, Lease, Store, StoreError};

use crate::audit_writer::AuditWriter;
use crate::driver::Driver;
use crate::lease::{Beat, LEASE_TTL_MS, holder_gone, new_owner};
use crate::{Agent, EngineError, Observer, RunReport, RunRequest};

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// What a cancellation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// Nobody was driving the run: it is now ended `cancelled`.
    Ended(Box<RunReport>),
    /// A live process drives the run: it was asked to stop, and ends the run `cancelled` at its
    /// next step boundary (after any tool call in flight).
    Requested,
}

/// Drives runs against a store, recording every event in the audit trail.
pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    state_dir: PathBuf,
    #[cfg(feature = "faults")]
    faults: crate::FaultPlan,
    pub(crate) audit: AuditWriter,
    /// The budget ledger, in the store's database, opened on first use.
    ledger: OnceLock<Arc<rein_store::BudgetLedger>>,
    /// The memory tools' notes, opened on first use (`<state_dir>/memory.sqlite`).
    notes: OnceLock<Arc<rein_store::NoteStore>>,
    /// Runs this engine drives now, so a cancellation from this process reaches them at once.
    live: Mutex<HashMap<String, Arc<Beat>>>,
    /// Set when the process shuts down: runs stop at their next durable point.
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

/// Releases a lease when dropped (a short lease taken to decide, settle or cancel).
struct Holding<'a> {
    store: &'a dyn Store,
    lease: Lease,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let _ = self.store.release_lease(&self.lease);
    }
}

impl Engine {
    /// An engine recording into `store` and `audit`, keeping per-run workspaces under
    /// `state_dir`. The audit trail is not optional: every event of every run it drives is
    /// recorded there.
    pub fn new(store: Arc<dyn Store>, state_dir: &Path, audit: Arc<AuditLog>) -> Engine {
        Engine {
            audit: AuditWriter::start(audit, store.as_ref()),
            store,
            clock: Arc::new(SystemClock),
            state_dir: state_dir.to_owned(),
            #[cfg(feature = "faults")]
            faults: crate::FaultPlan::default(),
            ledger: OnceLock::new(),
            notes: OnceLock::new(),
            live: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Asks every run this engine drives to stop at its next durable point (after a tool's
    /// outcome is recorded, before a model call): each ends its drive with
    /// [`EngineError::Stopped`], leaving the run interrupted and resumable. No run starts or
    /// resumes afterwards.
    pub fn stop_driving(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Engine::stop_driving`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many runs this engine drives now.
    pub fn driving(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Uses another clock (for tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// Injects faults (crash tests; only in builds with the `faults` feature).
    #[cfg(feature = "faults")]
    pub fn with_faults(mut self, faults: crate::FaultPlan) -> Engine {
        self.faults = faults;
        self
    }

    #[cfg(feature = "faults")]
    pub(crate) fn fault_after_event(&self, seq: u64) -> bool {
        self.faults.after_event == Some(seq)
    }

    #[cfg(not(feature = "faults"))]
    pub(crate) fn fault_after_event(&self, _seq: u64) -> bool {
        false
    }

    #[cfg(feature = "faults")]
    pub(crate) fn fault_after_effect(&self, n: u32) -> bool {
        self.faults.after_effect == Some(n)
    }

    #[cfg(not(feature = "faults"))]
    pub(crate) fn fault_after_effect(&self, _n: u32) -> bool {
        false
    }

    pub(crate) fn fault_stop(&self) {
        #[cfg(feature = "faults")]
        if let Some(stop) = &self.faults.stop {
            stop();
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The audit log runs are recorded in.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        self.audit.log()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The state directory (per-run workspaces, the budget ledger, the notes).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The notes the memory tools keep.
    pub fn notes(&self) -> Result<Arc<rein_store::NoteStore>, EngineError> {
        if let Some(notes) = self.notes.get() {
            return Ok(notes.clone());
        }
        let opened = Arc::new(rein_store::NoteStore::open(&self.state_dir)?);
        Ok(self.notes.get_or_init(|| opened).clone())
    }

    /// The budget ledger shared by every run of this engine (and, through SQLite, of every
    /// process using the same state directory).
    pub fn ledger(&self) -> Result<Arc<rein_store::BudgetLedger>, EngineError> {
        if let Some(ledger) = self.ledger.get() {
            return Ok(ledger.clone());
        }
        let opened = Arc::new(self.store.ledger()?);
        Ok(self.ledger.get_or_init(|| opened).clone())
    }

    pub(crate) fn track(&self, run_id: &str, beat: Arc<Beat>) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(run_id.to_owned(), beat);
        }
    }

    pub(crate) fn untrack(&self, run_id: &str) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(run_id);
        }
    }

    /// Takes the lease of an existing run: refused, naming the holder, while another live
    /// process drives it; taken over from a holder that lapsed or whose process died.
    fn acquire(&self, run_id: &str) -> Result<Lease, EngineError> {
        Ok(self.store.acquire_lease(
            run_id,
            &new_owner(),
            LEASE_TTL_MS,
            self.clock.now_ms(),
            &holder_gone,
        )?)
    }

    /// Starts a new run of `agent` on `task` and drives it to an end (or to a stop).
    pub async fn start(
        &self,
        agent: &Agent,
        request: impl Into<RunRequest>,
        observer: &dyn Observer,
    ) -> Result<RunReport, EngineError> {
        let request = request.into();
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        self.start_as(agent, run_id, &request, observer).await
    }

    /// Starts a run under an id the caller chose (a server answers with it before the run is
    /// driven): 32 lower-case hex digits, not used by another run.
    pub async fn start_with_id(
        &self,
        agent: &Agent,
        run_id: &str,
        request: impl Into<RunRequest>,
        observer: &dyn Observer,
    ) -> Result<RunReport, EngineError> {
        if run_id.len() != 32
            || !run_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(EngineError::Agent(format!(
                "`{run_id}` is not a run id: 32 lower-case hex digits"
            )));
        }
        self.start_as(agent, run_id.to_owned(), &request.into(), observer)
            .await
    }

    async fn start_as(
        &self,
        agent: &Agent,
        run_id: String,
        request: &RunRequest,
        observer: &dyn Observer,
    ) -> Result<RunReport, EngineError> {
        if self.is_stopping() {
            return Err(EngineError::Stopped { run_id });
        }
        let workspace = self.prepare_workspace(agent, &run_id)?;
        let lease = Lease::new_run(&run_id, &new_owner(), self.clock.now_ms() + LEASE_TTL_MS);
        Driver::new(self, agent, lease, RunState::default(), workspace, observer)
            .start(request)
            .await
    }

    /// Continues a run from its log. `agent` is the run's agent, loaded again. Refused while
    /// another live process drives the run.
    pub async fn resume(
        &self,
        run_id: &str,
        agent: &Agent,
        observer: &dyn Observer,
    ) -> Result<RunReport, EngineError> {
        self.resume_driver(run_id, agent, observer)?.resume().await
    }

    /// A driver for an existing run, holding its lease, with its log backfilled into the trail.
    pub(crate) fn resume_driver<'a>(
        &'a self,
        run_id: &str,
        agent: &'a Agent,
        observer: &'a dyn Observer,
    ) -> Result<Driver<'a>, EngineError> {
        if self.is_stopping() {
            return Err(EngineError::Stopped {
                run_id: run_id.to_owned(),
            });
        }
        let lease = self.acquire(run_id)?;
        let prepared = (|| {
            let state = self.load(run_id)?;
            if let Some(ended) = state.ended() {
                return Err(EngineError::AlreadyEnded {
                    run_id: run_id.to_owned(),
                    status: ended.status,
                });
            }
            self.backfill_audit(run_id)?;
            Ok(state)
        })();
        let state = match prepared {
            Ok(state) => state,
            Err(e) => {
                let _ = self.store.release_lease(&lease);
                return Err(e);
            }
        };
        let workspace = PathBuf::from(
            state
                .started()
                .map(|s| s.workspace.clone())
                .unwrap_or_default(),
        );
        Ok(Driver::new(self, agent, lease, state, workspace, observer))
    }

    /// Appends one event to a run under a short lease of this process's own (a decision, a
    /// settlement, a cancellation), redacted, audited, and durable before it returns.
    async fn append_one(
        &self,
        holding: &Holding<'_>,
        state: &mut RunState,
        event: Event,
        redactor: &Redactor,
        durability: Durability,
    ) -> Result<(), EngineError> {
        let run_id = holding.lease.run_id.clone();
        let event = crate::secrets::redact_event(redactor, event)?;
        let stored = StoredEvent {
            seq: state.last_seq() + 1,
            at_ms: self.clock.now_ms(),
            event,
        };
        state.apply(&stored).map_err(|source| EngineError::State {
            run_id: run_id.clone(),
            source,
        })?;
        let entry =
            crate::audit::entry_for(&run_id, &stored, state, &|b| self.audit.log().keyed_hash(b));
        // Its record and a checkpoint after it are written with the append's batch.
        let (hook, signed) = self.audit.sender().closing_hook(
            vec![entry],
            durability == Durability::Fsync,
            self.clock.now_ms(),
        );
        self.store
            .append(
                &holding.lease,
                std::slice::from_ref(&stored),
                durability,
                Some(hook),
            )
            .await?;
        signed.wait().await
    }

    /// Records a person's decision on a pending approval, from any process, while its run is
    /// suspended. The run continues when it is resumed. `redactor` and `durability` are the
    /// run's agent's: the note passes the redactor like every event.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        approval: &str,
        approved: bool,
        by: &str,
        note: Option<String>,
        redactor: &Redactor,
        durability: Durability,
    ) -> Result<ApprovalSummary, EngineError> {
        let summary = self.store.approval(approval)?;
        if summary.status != "pending" {
            return Err(EngineError::Approval(format!(
                "approval {} was already {}{}",
                summary.id,
                summary.status,
                summary
                    .decided_by
                    .as_ref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default()
            )));
        }
        let now = self.clock.now_ms();
        if approved && summary.expires_ms.is_some_and(|at| now >= at) {
            return Err(EngineError::Approval(format!(
                "approval {} has expired, which counts as denied; resume the run to continue without it",
                summary.id
            )));
        }
        let holding = Holding {
            store: self.store.as_ref(),
            lease: self.acquire(&summary.run_id).map_err(|e| match e {
                EngineError::Store(StoreError::Leased { holder, .. }) => EngineError::Approval(
                    format!(
                        "run {} is being driven by {holder}; decide once it has suspended (`rein runs show {}`)",
                        summary.run_id, summary.run_id
                    ),
                ),
                other => other,
            })?,
        };
        self.backfill_audit(&summary.run_id)?;
        let mut state = self.load(&summary.run_id)?;
        if !state.is_suspended() {
            return Err(EngineError::Approval(format!(
                "run {} is not waiting for this approval (it is {}); nothing was recorded",
                summary.run_id,
                state
                    .ended()
                    .map(|e| format!("ended {}", e.status))
                    .unwrap_or_else(|| "working".into())
            )));
        }
        self.append_one(
            &holding,
            &mut state,
            Event::ApprovalDecided {
                approval_id: summary.id.clone(),
                approved,
                by: by.to_owned(),
                note,
                expired: false,
            },
            redactor,
            durability,
        )
        .await?;
        drop(holding);
        Ok(self.store.approval(&summary.id)?)
    }

    /// Settles the call a `needs_reconciliation` run stopped on, from what a person found out:
    /// its effect `happened` (with the tool's `output`), or did not (it is judged and run again).
    /// The run can then be resumed.
    #[allow(clippy::too_many_arguments)]
    pub async fn reconcile(
        &self,
        run_id: &str,
        call_id: &str,
        happened: bool,
        output: serde_json::Value,
        by: &str,
        note: Option<String>,
        redactor: &Redactor,
        durability: Durability,
    ) -> Result<(), EngineError> {
        let holding = Holding {
            store: self.store.as_ref(),
            lease: self.acquire(run_id)?,
        };
        self.backfill_audit(run_id)?;
        let mut state = self.load(run_id)?;
        match state.ended() {
            Some(ended)
                if ended.status == EndState::NeedsReconciliation
                    && ended.call_id.as_deref() == Some(call_id) => {}
            Some(ended) if ended.status == EndState::NeedsReconciliation => {
                return Err(EngineError::Reconcile(format!(
                    "run {run_id} stopped on call {}, not {call_id}",
                    ended.call_id.clone().unwrap_or_default()
                )));
            }
            _ => {
                return Err(EngineError::Reconcile(format!(
                    "run {run_id} is not waiting for reconciliation"
                )));
            }
        }
        self.append_one(
            &holding,
            &mut state,
            Event::CallReconciled {
                call_id: call_id.to_owned(),
                happened,
                output: if happened {
                    output
                } else {
                    serde_json::Value::Null
                },
                by: by.to_owned(),
                note,
            },
            redactor,
            durability,
        )
        .await
    }

    /// Cancels a run. A run nobody drives (suspended, interrupted, waiting for reconciliation)
    /// ends `cancelled` now; a run a live process drives is asked to stop, and ends `cancelled`
    /// at its next step boundary.
    pub async fn cancel(
        &self,
        run_id: &str,
        by: &str,
        redactor: &Redactor,
        durability: Durability,
    ) -> Result<Cancelled, EngineError> {
        let summary = self.store.run(run_id)?;
        if let Some(status) = summary
            .status
            .filter(|s| *s != EndState::AwaitingApproval && *s != EndState::NeedsReconciliation)
        {
            return Err(EngineError::Cancel(format!(
                "run {run_id} already ended {status}; there is nothing to cancel"
            )));
        }
        let here = self.live.lock().ok().and_then(|l| l.get(run_id).cloned());
        if let Some(beat) = here {
            beat.request_cancel(by);
            return Ok(Cancelled::Requested);
        }
        let lease = match self.acquire(run_id) {
            Ok(lease) => lease,
            Err(EngineError::Store(StoreError::Leased { .. })) => {
                self.store.request_cancel(run_id, by)?;
                return Ok(Cancelled::Requested);
            }
            Err(e) => return Err(e),
        };
        let holding = Holding {
            store: self.store.as_ref(),
            lease,
        };
        self.backfill_audit(run_id)?;
        let mut state = self.load(run_id)?;
        if let Some(ended) = state
            .ended()
            .filter(|e| e.status != EndState::NeedsReconciliation)
        {
            return Err(EngineError::Cancel(format!(
                "run {run_id} already ended {}; there is nothing to cancel",
                ended.status
            )));
        }
        if state.ended().is_some() {
            // A run stopped on a call in doubt: it is settled as cancelled, the call stays in
            // doubt and is named in the reason.
            return Err(EngineError::Cancel(format!(
                "run {run_id} stopped on a call in doubt; settle it with `rein runs reconcile` first, then cancel"
            )));
        }
        // A run cancelled while suspended returns nothing the model said: no gate judged it.
        let output = None;
        self.append_one(
            &holding,
            &mut state,
            Event::RunEnded {
                status: EndState::Cancelled,
                output,
                reason: Some(format!("cancelled by {by}")),
                call_id: None,
            },
            redactor,
            durability,
        )
        .await?;
        drop(holding);
        if let Ok(ledger) = self.ledger() {
            let _ = ledger.release_admission(run_id).await;
        }
        RunReport::from_state(run_id, &state)
            .map(|r| Cancelled::Ended(Box::new(r)))
            .ok_or_else(|| EngineError::Cancel(format!("run {run_id} has no start")))
    }

    /// Appends to the audit trail the records of `run_id`'s events that it lacks (a crash
    /// between an event's commit and its record's write), in order. Returns how many.
    pub fn backfill_audit(&self, run_id: &str) -> Result<usize, EngineError> {
        let log = self.audit.log();
        let Some(cursor) = log
            .cursor(run_id)
            .map_err(|e| EngineError::Audit(e.to_string()))?
        else {
            // Its records predate records naming their events: they cannot be followed.
            return Ok(0);
        };
        let events = self.store.events_after(run_id, 0)?;
        if events.last().is_none_or(|e| e.seq <= cursor) {
            return Ok(0);
        }
        let entries = crate::audit::missing(run_id, &events, cursor, &|b| log.keyed_hash(b))
            .map_err(|source| EngineError::State {
                run_id: run_id.to_owned(),
                source,
            })?;
        let n = entries.len();
        log.append(&entries)
            .map_err(|e| EngineError::Audit(e.to_string()))?;
        Ok(n)
    }

    /// Starts a sub-agent's run for a delegated task, or continues it if a crash interrupted the
    /// delegation: its id is derived from the parent run and rein's own call id (never from text
    /// a model wrote), so it is always found again.
    pub(crate) fn run_child<'a>(
        &'a self,
        child: Arc<Agent>,
        request: RunRequest,
        observer: &'a dyn Observer,
    ) -> BoxFuture<'a, Result<RunReport, EngineError>> {
        Box::pin(async move {
            let parent = request
                .parent
                .clone()
                .ok_or_else(|| EngineError::Agent("a sub-agent's run needs its parent".into()))?;
            if !rein_core::reply::is_safe_id(&parent.call_id) {
                return Err(EngineError::Agent(format!(
                    "call id {:?} cannot name a sub-agent's run",
                    parent.call_id
                )));
            }
            let run_id = format!("{}-{}", parent.run_id, parent.call_id);
            match self.store.run(&run_id) {
                Ok(_) => {
                    let state = self.load(&run_id)?;
                    match RunReport::from_state(&run_id, &state) {
                        Some(report) if state.ended().is_some() => Ok(report),
                        _ => self.resume(&run_id, &child, observer).await,
                    }
                }
                Err(StoreError::NotFound(_)) => {
                    self.start_as(&child, run_id, &request, observer).await
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Folds a run's log.
    pub fn load(&self, run_id: &str) -> Result<RunState, EngineError> {
        let events = self.store.events(run_id)?;
        RunState::from_events(&events).map_err(|source| EngineError::State {
            run_id: run_id.to_owned(),
            source,
        })
    }
}
