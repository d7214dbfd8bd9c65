//! The rein run loop: it drives a model and tools through the durable event log, resumes runs
//! after crashes, and measures its own cost.
//!
//! The engine holds no run state of its own. Every decision comes from
//! [`rein_core::RunState::next_action`] over the events recorded so far; every event is applied to
//! that state and appended to the [`rein_store::Store`] in the same step. A tool's intent is
//! durable before the tool runs and its outcome is durable before the run moves on, so a process
//! killed at any moment leaves a log that [`Engine::resume`] continues without repeating an effect.

mod agent;
mod audit;
mod audit_writer;
pub mod bench;
pub mod context;
mod driver;
mod mcp;
mod observe;
pub mod resilience;
pub mod secrets;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rein_core::{
    BoxFuture, Clock, EndState, Event, ParentRef, RunState, StateError, StoredEvent, Usage,
};
use rein_store::{ApprovalSummary, Store, StoreError};
use serde::Serialize;

pub use agent::{Agent, AgentTools, build_tools, load_gate};
pub use mcp::{McpSet, connect_mcp};
pub use observe::{FaultPlan, NoObserver, Observer};

/// What can stop the engine from driving a run. A run that ends badly (a failing provider, a
/// limit) is not an error: it ends in a named state. These are the cases where rein itself
/// cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run's log does not make sense.
    #[error("run {run_id}: its log is inconsistent at {source}")]
    State {
        /// The run.
        run_id: String,
        /// Where and why.
        #[source]
        source: StateError,
    },
    /// The run has already ended; there is nothing to resume.
    #[error("run {run_id} already ended as {status}; there is nothing to resume")]
    AlreadyEnded {
        /// The run.
        run_id: String,
        /// How it ended.
        status: EndState,
    },
    /// A fault injection point stopped the run; nothing after it was recorded, exactly as if the
    /// process had died there. Resume the run to continue.
    #[error("run {run_id} was stopped by fault injection after event {seq}")]
    Interrupted {
        /// The run.
        run_id: String,
        /// The last event recorded.
        seq: u64,
    },
    /// An agent folder (a sub-agent's) could not be loaded.
    #[error(transparent)]
    Config(#[from] rein_config::ConfigError),
    /// The agent's policies are invalid (every problem, located).
    #[error("{0}")]
    Policy(rein_policy::PolicyErrors),
    /// The audit log could not be written; the run stops rather than act unrecorded.
    #[error("audit log: {0}")]
    Audit(String),
    /// A run cannot be reconciled.
    #[error("{0}")]
    Reconcile(String),
    /// An approval cannot be decided.
    #[error("{0}")]
    Approval(String),
    /// The agent could not be built from its configuration.
    #[error("{0}")]
    Agent(String),
    /// The run's workspace could not be prepared.
    #[error("workspace {path}: {source}")]
    Workspace {
        /// The folder.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The outcome of driving a run, as `rein run --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The run's id.
    pub run_id: String,
    /// The agent's name.
    pub agent: String,
    /// How the run ended.
    pub status: EndState,
    /// Model calls made.
    pub steps: u32,
    /// Tool executions started.
    pub tool_calls: u32,
    /// The final or partial output.
    pub output: Option<String>,
    /// Why the run did not complete.
    pub reason: Option<String>,
    /// What the model calls cost, in US dollars.
    pub cost_usd: f64,
    /// The tool calls that completed, in order.
    pub completed: Vec<String>,
    /// The tool calls that did not (failed, denied, rejected), with how.
    pub not_completed: Vec<String>,
    /// The tool call in doubt, for `needs_reconciliation`.
    pub call_id: Option<String>,
    /// Tokens used.
    pub usage: Usage,
    /// Time the run was active, summed over the processes that drove it.
    pub active_ms: u64,
    /// The run's workspace.
    pub workspace: String,
    /// For `awaiting_approval`: the approvals the run waits for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
}

/// What a new run is asked to do, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The task.
    pub task: String,
    /// Who the run acts for (`context.user` in policies).
    pub user: String,
    /// The tenant (`context.tenant`).
    pub tenant: String,
    /// For a sub-agent's run: the run and call it was delegated from.
    pub parent: Option<ParentRef>,
}

impl From<&str> for RunRequest {
    fn from(task: &str) -> RunRequest {
        RunRequest {
            task: task.to_owned(),
            user: "anonymous".into(),
            tenant: "default".into(),
            parent: None,
        }
    }
}

impl RunReport {
    /// The report of a run whose log is folded into `state`, once it has ended or suspended.
    pub fn from_state(run_id: &str, state: &RunState) -> Option<RunReport> {
        let started = state.started()?;
        let (status, output, reason, call_id, approvals) = match state.ended() {
            Some(ended) => (
                ended.status,
                ended.output.clone(),
                ended.reason.clone(),
                ended.call_id.clone(),
                vec![],
            ),
            None if state.is_suspended() => {
                let pending = state.pending_approvals();
                let reason = format!(
                    "waiting for a person to decide {} approval request{}: rein approvals list",
                    pending.len(),
                    if pending.len() == 1 { "" } else { "s" }
                );
                (
                    EndState::AwaitingApproval,
                    state.last_text().map(str::to_owned),
                    Some(reason),
                    None,
                    pending,
                )
            }
            None => return None,
        };
        let (completed, not_completed): (Vec<_>, Vec<_>) = state
            .history()
            .iter()
            .partition(|(_, r)| *r == rein_core::state::CallResult::Done);
        Some(RunReport {
            cost_usd: state.cost_micros() as f64 / 1e6,
            completed: completed.into_iter().map(|(t, _)| t.clone()).collect(),
            not_completed: not_completed
                .into_iter()
                .map(|(t, r)| {
                    format!(
                        "{t} ({})",
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    )
                })
                .collect(),
            run_id: run_id.to_owned(),
            agent: started.agent.clone(),
            status,
            steps: state.steps(),
            tool_calls: state.tool_executions(),
            output,
            reason,
            call_id,
            usage: state.usage(),
            active_ms: state.active_ms(state.last_at_ms()),
            workspace: started.workspace.clone(),
            approvals,
        })
    }
}

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

/// Drives runs against a store.
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    state_dir: PathBuf,
    faults: FaultPlan,
    audit: Option<audit_writer::AuditWriter>,
    /// The budget ledger, opened on first use (`<state_dir>/budgets.sqlite`).
    ledger: std::sync::OnceLock<Arc<rein_store::BudgetLedger>>,
    /// The memory tools' notes, opened on first use (`<state_dir>/memory.sqlite`).
    notes: std::sync::OnceLock<Arc<rein_store::NoteStore>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl Engine {
    /// An engine recording into `store`, keeping per-run workspaces under `state_dir`.
    pub fn new(store: Arc<dyn Store>, state_dir: &Path) -> Engine {
        Engine {
            store,
            clock: Arc::new(SystemClock),
            state_dir: state_dir.to_owned(),
            faults: FaultPlan::default(),
            audit: None,
            ledger: std::sync::OnceLock::new(),
            notes: std::sync::OnceLock::new(),
        }
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
        let opened = Arc::new(rein_store::BudgetLedger::open(&self.state_dir)?);
        Ok(self.ledger.get_or_init(|| opened).clone())
    }

    /// Uses another clock (for tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// Records every decision, approval, model call, tool call and run ending in `log`.
    pub fn with_audit(mut self, log: Arc<rein_audit::AuditLog>) -> Engine {
        self.audit = Some(audit_writer::AuditWriter::start(log));
        self
    }

    /// Replaces the sensitive fields of a tool's arguments by keyed hashes, for the audit trail.
    pub(crate) fn redact_args(
        &self,
        sensitive: Option<&Vec<String>>,
        mut args: serde_json::Value,
    ) -> serde_json::Value {
        if let (Some(fields), Some(writer), Some(map)) =
            (sensitive, &self.audit, args.as_object_mut())
        {
            for field in fields {
                if let Some(value) = map.get_mut(field) {
                    *value = serde_json::json!({ "keyed_hash": writer.log().keyed_hash(value.to_string().as_bytes()) });
                }
            }
        }
        args
    }

    /// Queues audit records; when `checkpoint` (a run ended or suspended) waits until they are
    /// written and a checkpoint is signed. A write that failed earlier stops the run here.
    pub(crate) async fn audit(
        &self,
        entries: Vec<rein_audit::Entry>,
        checkpoint: bool,
    ) -> Result<(), EngineError> {
        let Some(writer) = &self.audit else {
            return Ok(());
        };
        if let Some(failure) = writer.failure() {
            return Err(EngineError::Audit(failure));
        }
        if !entries.is_empty() {
            writer.append(entries).map_err(EngineError::Audit)?;
        }
        if checkpoint {
            writer
                .checkpoint(self.clock.now_ms())
                .await
                .map_err(EngineError::Audit)?;
        }
        Ok(())
    }

    /// Injects faults (for crash tests).
    pub fn with_faults(mut self, faults: FaultPlan) -> Engine {
        self.faults = faults;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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
        let workspace = self.prepare_workspace(agent, &run_id)?;
        driver::Driver::new(
            self,
            agent,
            run_id,
            RunState::default(),
            workspace,
            observer,
        )
        .start(&request)
        .await
    }

    /// Continues a run from its log. `agent` is the run's agent, loaded again.
    pub async fn resume(
        &self,
        run_id: &str,
        agent: &Agent,
        observer: &dyn Observer,
    ) -> Result<RunReport, EngineError> {
        let state = self.load(run_id)?;
        if let Some(ended) = state.ended() {
            return Err(EngineError::AlreadyEnded {
                run_id: run_id.to_owned(),
                status: ended.status,
            });
        }
        let workspace = PathBuf::from(
            state
                .started()
                .map(|s| s.workspace.clone())
                .unwrap_or_default(),
        );
        driver::Driver::new(self, agent, run_id.to_owned(), state, workspace, observer)
            .resume()
            .await
    }

    /// Records a person's decision on a pending approval, from any process, while its run is
    /// suspended. The run continues when it is resumed.
    pub async fn decide(
        &self,
        approval: &str,
        approved: bool,
        by: &str,
        note: Option<String>,
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
        let mut state = self.load(&summary.run_id)?;
        if !state.is_suspended() {
            return Err(EngineError::Approval(format!(
                "run {} is still working; decide once it has suspended (`rein runs show {}`)",
                summary.run_id, summary.run_id
            )));
        }
        let stored = StoredEvent {
            seq: state.last_seq() + 1,
            at_ms: now,
            event: Event::ApprovalDecided {
                approval_id: summary.id.clone(),
                approved,
                by: by.to_owned(),
                note,
                expired: false,
            },
        };
        state.apply(&stored).map_err(|source| EngineError::State {
            run_id: summary.run_id.clone(),
            source,
        })?;
        self.store
            .append(&summary.run_id, std::slice::from_ref(&stored))
            .await?;
        if let Some(entry) = audit::entry_for(&summary.run_id, &stored, &state, &|_, args| args) {
            self.audit(vec![entry], true).await?;
        }
        Ok(self.store.approval(&summary.id)?)
    }

    /// Starts a sub-agent's run for a delegated task, or continues it if a crash interrupted the
    /// delegation: its id is derived from the parent run and call, so it is always found again.
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
                    let workspace = self.prepare_workspace(&child, &run_id)?;
                    driver::Driver::new(
                        self,
                        &child,
                        run_id,
                        RunState::default(),
                        workspace,
                        observer,
                    )
                    .start(&request)
                    .await
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Settles the call a `needs_reconciliation` run stopped on, from what a person found out:
    /// its effect `happened` (with the tool's `output`), or did not (it is judged and run again).
    /// The run can then be resumed.
    pub async fn reconcile(
        &self,
        run_id: &str,
        call_id: &str,
        happened: bool,
        output: serde_json::Value,
        by: &str,
        note: Option<String>,
    ) -> Result<(), EngineError> {
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
        let stored = StoredEvent {
            seq: state.last_seq() + 1,
            at_ms: self.clock.now_ms(),
            event: Event::CallReconciled {
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
        };
        state.apply(&stored).map_err(|source| EngineError::State {
            run_id: run_id.to_owned(),
            source,
        })?;
        self.store
            .append(run_id, std::slice::from_ref(&stored))
            .await?;
        if let Some(entry) = audit::entry_for(run_id, &stored, &state, &|_, args| args) {
            self.audit(vec![entry], true).await?;
        }
        Ok(())
    }

    /// Folds a run's log.
    pub fn load(&self, run_id: &str) -> Result<RunState, EngineError> {
        let events = self.store.events(run_id)?;
        RunState::from_events(&events).map_err(|source| EngineError::State {
            run_id: run_id.to_owned(),
            source,
        })
    }

    fn prepare_workspace(&self, agent: &Agent, run_id: &str) -> Result<PathBuf, EngineError> {
        if !agent.isolate_workspace {
            return Ok(agent.workspace.clone());
        }
        let target = self.state_dir.join("workspaces").join(run_id);
        let fail = |source| EngineError::Workspace {
            path: target.display().to_string(),
            source,
        };
        copy_tree(&agent.workspace, &target).map_err(fail)?;
        target.canonicalize().map_err(fail)
    }
}

/// Copies a folder recursively. Symbolic links are copied as links, never followed, so a copy
/// cannot pull in files from outside the folder.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
