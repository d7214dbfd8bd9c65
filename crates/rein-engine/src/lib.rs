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
mod engine;
mod gateway;
mod lease;
mod mcp;
mod observe;
pub mod policy_data;
pub mod resilience;
pub mod secrets;
mod trail;
mod workspace;

use rein_core::{EndState, ParentRef, RunState, StateError, Usage};
use rein_store::StoreError;
use serde::Serialize;

pub use agent::{Agent, AgentTools, build_tools, load_gate};
pub use engine::{Cancelled, Engine, SystemClock};
pub use gateway::{GATEWAY_REQUEST, GatewayReply, GatewayTurn, Withheld, WithheldBy};
pub use lease::LEASE_TTL_MS;
pub use mcp::{McpSet, connect_mcp};
#[cfg(feature = "faults")]
pub use observe::FaultPlan;
pub use observe::{NoObserver, Observer};
pub use trail::TrailCheck;

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
    /// The process is shutting down: the run stopped at a durable point and can be resumed.
    #[error("run {run_id} stopped because rein is shutting down; it is resumable")]
    Stopped {
        /// The run.
        run_id: String,
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
    /// An event could not be redacted: rein records nothing rather than a secret.
    #[error("redaction: {0}")]
    Redaction(String),
    /// A run cannot be cancelled.
    #[error("{0}")]
    Cancel(String),
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
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    /// The task.
    pub task: String,
    /// Who the run acts for (`context.user` in policies).
    pub user: String,
    /// The tenant (`context.tenant`).
    pub tenant: String,
    /// The id of the API token that started it, for `token` budgets.
    pub token: Option<String>,
    /// For a sub-agent's run: the run and call it was delegated from.
    pub parent: Option<ParentRef>,
    /// Grants fixed with the run (`--grant`): once untrusted data is in the run, a call none
    /// of them covers is denied. `None` leaves them to the agent's planner, if it has one.
    pub grants: Option<Vec<rein_core::grants::Grant>>,
}

impl From<&str> for RunRequest {
    fn from(task: &str) -> RunRequest {
        RunRequest {
            token: None,
            task: task.to_owned(),
            user: "anonymous".into(),
            tenant: "default".into(),
            parent: None,
            grants: None,
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
                // Nothing the model said is returned until the run ends and it is judged.
                (
                    EndState::AwaitingApproval,
                    None,
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
