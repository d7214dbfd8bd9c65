//! Driving one run: ask the core what to do, do it, record what happened.
//!
//! The driver is split by concern: [`record`] (every event passes one function that redacts,
//! applies, stores and audits it), [`model_step`] (the model call with routing, fallbacks,
//! retries and budgets), [`budget`] (ledger lines, admission, reservations), [`tool_step`]
//! (checking, judging, running and settling a tool call), [`wrap_up`] (the last turn when a budget
//! runs out) and [`memory`] (the memory tools' view of the notes). This file holds the loop.

mod budget;
mod gateway;
mod guard;
mod memory;
mod model_call;
mod model_step;
mod record;
mod tool_step;
mod wrap_up;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use rein_core::labels::{UNTRUSTED, UNTRUSTED_NOTICE};
use rein_core::{Action, Decision, EndState, Event, RunStarted, RunState, ToolCall, ToolSpec};
use rein_policy::RequestFacts;
use rein_store::{Commit, Lease};
use tracing::{Instrument, field};

use crate::context::{ContextWindow, TokenCounter};
use crate::lease::{Beat, Heartbeat};
use crate::{Agent, Engine, EngineError, Observer, RunReport, RunRequest};

pub(crate) use gateway::GatewayInput;

/// The report of a run a driver left ended or suspended.
fn report((run_id, state, _): (String, RunState, Vec<String>)) -> Result<RunReport, EngineError> {
    RunReport::from_state(&run_id, &state)
        .ok_or_else(|| EngineError::Agent(format!("run {run_id} stopped without an end state")))
}

/// What a model decision depends on: the labels in play, the model, the budget share.
pub(super) type ModelDecisionKey = (Vec<String>, String, u64);

pub(crate) struct Driver<'a> {
    engine: &'a Engine,
    agent: &'a Agent,
    run_id: String,
    /// The lease every append is made under.
    lease: Lease,
    state: RunState,
    workspace: PathBuf,
    observer: &'a dyn Observer,
    tool_specs: Vec<ToolSpec>,
    /// Events recorded and not yet handed to the store, with their audit records: they go
    /// together, as one append, at the next flush or wait on the outside world.
    unsent: Vec<rein_core::StoredEvent>,
    unsent_records: Vec<rein_audit::Entry>,
    /// Appends queued and not yet known to be committed.
    pending: Vec<Commit>,
    /// Events queued and not yet known to be committed, for an observer that wants only
    /// durable ones.
    uncommitted: Vec<rein_core::StoredEvent>,
    /// The last event handed to the store.
    submitted_seq: u64,
    /// A run_ended or run_suspended was recorded and not yet handed to the store: the append
    /// that carries it asks for a checkpoint.
    closing: bool,
    /// The checkpoint the append that closed the run asked for, answered once it is signed:
    /// the next flush waits for it.
    signed: Option<crate::audit_writer::Signed>,
    /// Settlements of model calls queued on the ledger and not yet known to be booked: awaited
    /// at the next flush, and before the budgets are read or held again.
    settling: Vec<rein_store::Queued<rein_store::Settled>>,
    /// Those settlements' writes, to go to the store with the run's next append.
    riding: Vec<rein_store::LedgerWrite>,
    effects: u32,
    /// Model-call decisions of this run, by the labels in play, the model and the budget share.
    model_decisions: Vec<(ModelDecisionKey, Decision)>,
    /// The largest share of a budget spent, as the policies see it.
    budget_percent: u64,
    /// Budgets whose warning level this run has already noted.
    warned: Vec<String>,
    /// Whether this driver has checked the run's admission on the shared budgets.
    admission_checked: bool,
    /// The conversation as the model is sent it, compacted to the context budget.
    window: ContextWindow,
    /// Tools whose outputs are never elided (sub-agent results).
    pinned_tools: HashSet<String>,
    /// What the lease's heartbeat learned (a cancellation, a lost lease).
    beat: Arc<Beat>,
    /// The policy data as last read.
    data: Arc<crate::policy_data::Loaded>,
    /// For a gateway turn not yet taken: what the client sent.
    gateway: Option<GatewayInput>,
    /// The calls handed to a gateway's client by this driver.
    handed: Vec<String>,
    /// In a gateway's model turn, the tools the model was offered: a call of any other (one of
    /// the gateway's own MCP tools, say) is refused, so a model cannot reach what its client
    /// never asked for.
    offered: Option<Vec<String>>,
    /// In a gateway's model turn, the client's own settings for the model call.
    settings: Option<rein_core::ModelSettings>,
    /// Whether this driver took a request's turn (a gateway run resumed after a crash did not:
    /// nobody is there to receive a call it would hand over).
    turn: bool,
    /// Whether the answer's calls were all judged before the first was dispatched (a gateway
    /// that fails a request whose answer holds a denied call).
    answer_prejudged: bool,
    /// While the answer's calls are judged before any is dispatched: those judged so far that
    /// dispatch would have started (`true`) or held for approval (`false`), which the calls
    /// after them count as dispatch would.
    ahead: Vec<(ToolCall, bool)>,
    /// Counts this run among those the store sees driven at once (a run driven alone commits
    /// its appends on its own thread).
    _driving: rein_store::Driving,
}

impl<'a> Driver<'a> {
    pub(crate) fn new(
        engine: &'a Engine,
        agent: &'a Agent,
        lease: Lease,
        state: RunState,
        workspace: PathBuf,
        observer: &'a dyn Observer,
    ) -> Driver<'a> {
        Driver {
            engine,
            agent,
            run_id: lease.run_id.clone(),
            lease,
            state,
            workspace,
            observer,
            // Tools the policies deny outright are not offered; every call is still judged.
            tool_specs: agent
                .tools
                .specs()
                .into_iter()
                .filter(|t| !agent.gate.denied_outright(&t.name))
                .collect(),
            unsent: Vec::new(),
            unsent_records: Vec::new(),
            pending: Vec::new(),
            uncommitted: Vec::new(),
            submitted_seq: 0,
            closing: false,
            signed: None,
            settling: Vec::new(),
            riding: Vec::new(),
            effects: 0,
            model_decisions: Vec::new(),
            budget_percent: 0,
            warned: Vec::new(),
            admission_checked: false,
            window: ContextWindow::new(TokenCounter::for_model(
                agent.provider.kind(),
                agent.provider.model(),
            )),
            pinned_tools: agent.delegates.keys().cloned().collect(),
            beat: Arc::new(Beat::default()),
            data: agent.policy_data.last(),
            gateway: None,
            handed: Vec::new(),
            offered: None,
            settings: None,
            turn: false,
            answer_prejudged: false,
            ahead: Vec::new(),
            _driving: engine.store.driving(),
        }
    }

    /// Makes this driver's run a gateway turn with what the client sent.
    pub(crate) fn for_gateway(mut self, input: GatewayInput) -> Self {
        self.gateway = Some(input);
        self.turn = true;
        self
    }

    /// Makes this driver answer a request of its gateway run's conversation (a held run resumed
    /// for it), so the calls it hands over have someone to receive them.
    pub(crate) fn taking_turn(mut self) -> Self {
        self.turn = true;
        self
    }

    /// Whether this run is a gateway's: one request of a client, one model call.
    pub(super) fn is_gateway(&self) -> bool {
        self.agent.gateway
    }

    pub(crate) async fn start(self, request: &RunRequest) -> Result<RunReport, EngineError> {
        report(self.start_through(request).await?)
    }

    pub(crate) async fn resume(self) -> Result<RunReport, EngineError> {
        report(self.resume_through().await?)
    }

    /// Starts the run and drives it until it ends or suspends (see [`Driver::drive_through`]).
    pub(crate) async fn start_through(
        mut self,
        request: &RunRequest,
    ) -> Result<(String, RunState, Vec<String>), EngineError> {
        let untrusted = self
            .agent
            .output_labels
            .values()
            .any(|l| l.iter().any(|l| l == UNTRUSTED));
        let instructions = if let Some(input) = &self.gateway {
            input.system.clone()
        } else if untrusted {
            format!(
                "{}\n\n{UNTRUSTED_NOTICE}",
                self.agent.instructions.trim_end()
            )
        } else {
            self.agent.instructions.clone()
        };
        // The run starts with the policy data as it is now; its digests are recorded.
        self.data = self.agent.policy_data.current().0;
        let started = RunStarted {
            token: request.token.clone(),
            agent: self.agent.name.clone(),
            agent_dir: self.agent.dir.as_ref().map(|d| d.display().to_string()),
            agent_digest: self.agent.digest.clone(),
            workspace: self.workspace.display().to_string(),
            task: request.task.clone(),
            instructions,
            provider: self.agent.provider.kind().to_owned(),
            model: self.agent.provider.model().to_owned(),
            // A gateway run makes one model call, bounded by the model's timeout: the limits of
            // a hosted run must not end it after its calls were handed over.
            limits: if self.is_gateway() {
                rein_core::Limits {
                    max_steps: u32::MAX,
                    wall_clock_ms: u64::MAX / 4,
                }
            } else {
                self.agent.limits
            },
            tools: self.agent.tools.names(),
            user: request.user.clone(),
            tenant: request.tenant.clone(),
            parent: request.parent.clone(),
            sensitive: self.agent.sensitive.clone(),
            grants: request.grants.clone(),
            data: self.data.digests.clone(),
        };
        let result = async {
            self.record(Event::RunStarted(Box::new(started))).await?;
            for notice in &self.agent.load_notices {
                self.record(Event::Notice {
                    kind: notice.kind.clone(),
                    subject: notice.subject.clone(),
                    detail: notice.detail.clone(),
                    call_id: None,
                })
                .await?;
            }
            self.record_gateway_request().await
        }
        .await;
        match result {
            Ok(()) => self.drive_through().await,
            Err(e) => {
                self.abandon().await;
                Err(e)
            }
        }
    }

    /// Resumes the run and drives it until it ends or suspends.
    pub(crate) async fn resume_through(
        mut self,
    ) -> Result<(String, RunState, Vec<String>), EngineError> {
        let agent_changed = self
            .state
            .started()
            .map(|s| s.agent_digest != self.agent.digest)
            .unwrap_or(false);
        let attempt = self.state.attempt() + 1;
        if let Err(e) = self
            .record(Event::RunResumed {
                attempt,
                agent_changed,
            })
            .await
        {
            self.abandon().await;
            return Err(e);
        }
        self.drive_through().await
    }

    /// The top run of this run's tree: a sub-agent shares its root's budget and session.
    fn root_run(&self) -> String {
        self.state
            .started()
            .and_then(|s| s.parent.as_ref())
            .map(|p| p.run_id.clone())
            .unwrap_or_else(|| self.run_id.clone())
    }

    /// Drives the run until it ends or suspends; answers with its state then and the calls
    /// handed to a gateway's client on the way.
    async fn drive_through(mut self) -> Result<(String, RunState, Vec<String>), EngineError> {
        let span = tracing::info_span!(
            "invoke_agent",
            otel.name = %format!("invoke_agent {}", self.agent.name),
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %self.agent.name,
            gen_ai.conversation.id = %self.run_id,
            gen_ai.provider.name = self.agent.provider.kind(),
            gen_ai.request.model = %self.agent.provider.model(),
            rein.run.status = field::Empty,
        );
        let ledger = if self.agent.budgets.is_empty() {
            None
        } else {
            Some(self.engine.ledger()?)
        };
        let _heartbeat = Heartbeat::start(
            self.engine.store.clone(),
            ledger,
            self.lease.clone(),
            vec![self.run_id.clone(), self.root_run()],
            self.engine.clock.clone(),
            self.beat.clone(),
        );
        self.engine.track(&self.run_id, self.beat.clone());
        let result = async {
            self.plan_grants().await?;
            self.drive_loop().await
        }
        .instrument(span)
        .await;
        self.engine.untrack(&self.run_id);
        if let Err(e) = result {
            self.abandon().await;
            return Err(e);
        }
        self.release_admission().await;
        let handed = std::mem::take(&mut self.handed);
        Ok((self.run_id.clone(), std::mem::take(&mut self.state), handed))
    }

    async fn drive_loop(&mut self) -> Result<(), EngineError> {
        loop {
            if self.engine.is_stopping() {
                self.flush().await?;
                return Err(EngineError::Stopped {
                    run_id: self.run_id.clone(),
                });
            }
            let action = self.state.next_action(self.engine.clock.now_ms());
            // The append that ends or suspends a run releases its lease, so a renewal that
            // fires while that end is still being sealed (the audit checkpoint, under a lock
            // many processes share) finds no lease: that is not a loss, the run is over.
            if self.beat.lost.load(std::sync::atomic::Ordering::SeqCst)
                && !matches!(action, Action::Finished(_) | Action::Suspended)
            {
                return Err(EngineError::Store(rein_store::StoreError::Conflict {
                    run_id: self.run_id.clone(),
                    detail: "this process lost the run's lease to another; it stops here".into(),
                }));
            }
            if let (Some(by), false) = (
                self.beat.cancelled_by(),
                matches!(action, Action::Finished(_) | Action::Suspended),
            ) {
                self.record(Event::RunEnded {
                    status: EndState::Cancelled,
                    output: self.state.last_text().map(str::to_owned),
                    reason: Some(format!("cancelled by {by}")),
                    call_id: None,
                })
                .await?;
                continue;
            }
            match action {
                Action::Finished(status) => {
                    tracing::Span::current().record("rein.run.status", status.as_str());
                    break;
                }
                Action::End(ended) => match self.unhanded_client_call(&ended) {
                    Some((call_id, _)) if self.turn => self.hand_off(call_id).await?,
                    Some((_, call)) => self.end_unhanded(ended.output, call).await?,
                    None => {
                        self.record(Event::RunEnded {
                            status: ended.status,
                            output: ended.output,
                            reason: ended.reason,
                            call_id: ended.call_id,
                        })
                        .await?
                    }
                },
                Action::Suspended => {
                    tracing::Span::current()
                        .record("rein.run.status", EndState::AwaitingApproval.as_str());
                    break;
                }
                Action::Suspend { approvals } => {
                    self.record(Event::RunSuspended { approvals }).await?
                }
                Action::Expire { approval_id } => {
                    self.record(Event::ApprovalDecided {
                        approval_id,
                        approved: false,
                        by: "rein".into(),
                        note: None,
                        expired: true,
                    })
                    .await?
                }
                Action::CallModel { step } if self.is_gateway() => self.gateway_step(step).await?,
                Action::CallModel { step } => self.call_model(step).await?,
                Action::Dispatch { call } => self.dispatch(call).await?,
                Action::ExecuteApproved { call, approved_by } => {
                    self.run_approved(call, approved_by).await?
                }
                Action::Reexecute { call, attempt } => self.execute(call, attempt).await?,
                Action::JudgeAnswer { step, text } => self.judge_answer(step, text, None).await?,
                Action::HoldAnswer { step, text } => self.hold_answer(step, text).await?,
                Action::ReleaseAnswer {
                    step,
                    text,
                    approved_by,
                } => self.judge_answer(step, text, Some(approved_by)).await?,
            }
        }
        self.flush().await
    }

    /// The driver stops without an end state (an error, or a fault point in a test): whatever
    /// it queued may still commit, but it gives up its lease and budget hold at once, so the run
    /// can be resumed (here or elsewhere) without waiting for them to lapse.
    async fn abandon(&mut self) {
        self.submit();
        for commit in self.pending.drain(..) {
            let _ = commit.await;
        }
        let _ = self.engine.store.release_lease(&self.lease);
        self.release_admission().await;
    }

    /// What the gate knows about the run for a request.
    fn facts(&self, approved_by: Option<String>) -> RequestFacts {
        let started = self.state.started();
        RequestFacts {
            budget_percent: self.budget_percent,
            user: started.map(|s| s.user.clone()).unwrap_or_default(),
            tenant: started.map(|s| s.tenant.clone()).unwrap_or_default(),
            task: started.map(|s| s.task.clone()).unwrap_or_default(),
            labels: self.state.labels().to_vec(),
            approved_by,
            cost_micros: self.state.cost_micros(),
            run_calls: self.state.calls_started(),
            ..RequestFacts::default()
        }
    }
}
