//! Runs: start, resume, list, show, reconcile and cancel.

use std::path::{Path, PathBuf};

use rein_core::secrets::Redactor;
use rein_core::{Durability, StoredEvent};
use rein_engine::{Agent, Observer, RunRequest};
use rein_store::{RunFilter, Store};

use crate::{Error, Rein, convert, v1};

/// Sees every event of a run: as it is recorded (the CLI's live view), or once it is durable
/// (what a server tells its clients, which a crash must not take back).
pub trait Watch: Send + Sync {
    /// Called for each event, in order.
    fn event(&self, run_id: &str, event: &v1::EventRecord);

    /// Whether events come only once committed (later, in batches) rather than as recorded.
    fn durable(&self) -> bool {
        false
    }
}

/// Hands the engine's events to a [`Watch`] as wire events.
pub(crate) struct Watching<'a>(pub(crate) &'a dyn Watch);

impl Observer for Watching<'_> {
    fn on_event(&self, run_id: &str, event: &StoredEvent) {
        if !self.0.durable() {
            self.0.event(run_id, &event.clone().into());
        }
    }

    fn wants_committed(&self) -> bool {
        self.0.durable()
    }

    fn on_committed(&self, run_id: &str, event: StoredEvent) {
        self.0.event(run_id, &event.into());
    }
}

/// An agent loaded once, for many runs (a server keeps its agents loaded).
pub struct LoadedAgent {
    agent: Agent,
    spec: rein_config::AgentSpec,
}

impl std::fmt::Debug for LoadedAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAgent")
            .field("name", &self.spec.name)
            .field("dir", &self.spec.dir)
            .finish()
    }
}

impl LoadedAgent {
    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }
    /// The digest of its configuration.
    pub fn digest(&self) -> &str {
        &self.spec.digest
    }
    /// The engine's agent.
    pub(crate) fn agent(&self) -> &Agent {
        &self.agent
    }
    /// Whether it is a gateway: it declares tools its clients run.
    pub fn is_gateway(&self) -> bool {
        self.agent.gateway
    }
    /// The tools of its MCP servers, as the MCP gateway serves them: (name, description, JSON
    /// Schema of the arguments), leaving out those the policies deny outright.
    pub fn mcp_tools(&self) -> Vec<(String, String, serde_json::Value)> {
        let mut out: Vec<_> = self
            .agent
            .tools
            .names()
            .into_iter()
            .filter(|n| self.is_mcp_tool(n) && !self.agent.gate().denied_outright(n))
            .filter_map(|n| self.agent.tools.get(&n).cloned())
            .map(|t| {
                let m = t.manifest();
                (m.name.clone(), m.description.clone(), m.parameters.clone())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether `tool` comes from one of its MCP servers (`server.tool`).
    pub fn is_mcp_tool(&self, tool: &str) -> bool {
        self.agent.tools.get(tool).is_some() && !self.spec.tools.iter().any(|t| t.name() == tool)
    }

    /// Whether, as a gateway, it fails a request whose answer held a denied call (rather than
    /// leaving the call out and saying so).
    pub fn fails_on_denied(&self) -> bool {
        self.spec
            .gateway
            .is_some_and(|g| g.on_denied == rein_config::OnDenied::Error)
    }
    /// Its gate.
    pub(crate) fn gate(&self) -> &rein_policy::Gate {
        self.agent.gate()
    }
    /// Stops its MCP servers.
    pub async fn close(&self) {
        close(&self.agent).await;
    }
}

/// A run to start on a loaded agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewRun {
    /// The task; the agent's `default_task` when absent.
    pub task: Option<String>,
    /// Who the run acts for.
    pub user: String,
    /// Its tenant.
    pub tenant: String,
    /// Grants fixed with the run.
    pub grants: Option<Vec<v1::Grant>>,
    /// The run's id, when the caller chose it (32 lower-case hex digits).
    pub run_id: Option<String>,
    /// The id of the API token that starts it, for `token` budgets.
    pub token: Option<String>,
}

/// What a new run is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRun {
    /// The agent folder.
    pub agent_dir: PathBuf,
    /// The task; the agent's `default_task` when absent.
    pub task: Option<String>,
    /// Who the run acts for.
    pub user: String,
    /// Its tenant.
    pub tenant: String,
    /// Overrides the agent's durability (`true`: flush every commit to disk).
    pub fsync: Option<bool>,
    /// Grants fixed with the run: once untrusted data is in it, a call none of them covers is
    /// denied. `None` leaves them to the agent's planner, if it has one.
    pub grants: Option<Vec<v1::Grant>>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    /// At most this many (0: 50).
    pub limit: usize,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this user's.
    pub user: Option<String>,
    /// Only this tenant's.
    pub tenant: Option<String>,
}

impl Rein {
    /// Loads an agent folder (connecting its MCP servers) for runs to be started on it.
    pub async fn load(&self, agent_dir: &Path) -> Result<LoadedAgent, Error> {
        let spec = rein_config::load(agent_dir)?;
        let agent = self.load_agent(&spec).await?;
        Ok(LoadedAgent { agent, spec })
    }

    /// Starts a run of an agent folder and drives it to its end or its suspension; `watch` sees
    /// every event as it is recorded.
    pub async fn start_run(
        &self,
        request: StartRun,
        watch: Option<&dyn Watch>,
    ) -> Result<v1::RunReport, Error> {
        let mut loaded = self.load(&request.agent_dir).await?;
        if let Some(fsync) = request.fsync {
            loaded.agent.durability = if fsync {
                Durability::Fsync
            } else {
                Durability::Normal
            };
        }
        let run = NewRun {
            task: request.task,
            user: request.user,
            tenant: request.tenant,
            grants: request.grants,
            run_id: None,
            token: None,
        };
        let report = self.start_on(&loaded, run, watch).await;
        loaded.close().await;
        report
    }

    /// Starts a run on an agent loaded already and drives it to its end or its suspension.
    pub async fn start_on(
        &self,
        loaded: &LoadedAgent,
        run: NewRun,
        watch: Option<&dyn Watch>,
    ) -> Result<v1::RunReport, Error> {
        let spec = &loaded.spec;
        let task = match run.task.or_else(|| spec.default_task.clone()) {
            Some(t) if !t.trim().is_empty() => t,
            _ => {
                return Err(Error::Invalid(format!(
                    "no task: pass one (`--task \"...\"`, or `task` in a request) or set `default_task` in {}",
                    spec.dir.join(rein_config::AGENT_FILE).display()
                )));
            }
        };
        let grants = run.grants.as_deref().map(convert::grants).transpose()?;
        let engine = self.engine()?;
        let request = RunRequest {
            token: run.token,
            task,
            user: run.user,
            tenant: run.tenant,
            parent: None,
            grants,
        };
        let observer: &dyn Observer = match watch {
            Some(w) => &Watching(w),
            None => &rein_engine::NoObserver,
        };
        let report = match &run.run_id {
            Some(id) => {
                engine
                    .start_with_id(&loaded.agent, id, request, observer)
                    .await
            }
            None => engine.start(&loaded.agent, request, observer).await,
        };
        Ok(convert::report(report?))
    }

    /// Continues a run from its log after a crash, a stop or its approvals' decisions. Refused
    /// while another live process drives it.
    pub async fn resume_run(
        &self,
        id: &str,
        watch: Option<&dyn Watch>,
    ) -> Result<v1::RunReport, Error> {
        let (run_id, agent_dir) = self.run_agent(id)?;
        let loaded = self
            .load(Path::new(&agent_dir))
            .await
            .map_err(|e| Error::Invalid(format!("loading the agent of run {run_id}: {e}")))?;
        let report = self.resume_on(&loaded, &run_id, watch).await;
        loaded.close().await;
        report
    }

    /// The run's full id and the agent folder it was started from.
    pub fn run_agent(&self, id: &str) -> Result<(String, String), Error> {
        let run_id = self.store()?.resolve_run_id(id)?;
        let state = self.engine()?.load(&run_id)?;
        match state.started().and_then(|s| s.agent_dir.clone()) {
            Some(dir) => Ok((run_id, dir)),
            None => Err(Error::Invalid(format!(
                "run {run_id} was started by a program, not from an agent folder; resume it from that program"
            ))),
        }
    }

    /// Continues a run on its agent, loaded already.
    pub async fn resume_on(
        &self,
        loaded: &LoadedAgent,
        id: &str,
        watch: Option<&dyn Watch>,
    ) -> Result<v1::RunReport, Error> {
        let run_id = self.store()?.resolve_run_id(id)?;
        let engine = self.engine()?;
        // A gateway's held turn hands its approved calls to the conversation's next request;
        // resumed here, they would go to nobody.
        if loaded.is_gateway() && engine.load(&run_id)?.is_suspended() {
            return Err(Error::Conflict(format!(
                "run {run_id} is a gateway request held for approval: it goes on when its conversation sends its next request, which receives the approved calls"
            )));
        }
        let observer: &dyn Observer = match watch {
            Some(w) => &Watching(w),
            None => &rein_engine::NoObserver,
        };
        Ok(convert::report(
            engine.resume(&run_id, &loaded.agent, observer).await?,
        ))
    }

    /// Asks every run this process drives to stop at its next durable point (they stay
    /// resumable), and starts no more: for a graceful shutdown.
    pub fn stop_driving(&self) -> Result<(), Error> {
        self.engine()?.stop_driving();
        Ok(())
    }

    /// How many runs this process drives now.
    pub fn driving(&self) -> usize {
        self.engine.get().map_or(0, |e| e.driving())
    }

    /// The most recent runs first.
    pub fn list_runs(&self, query: &RunQuery) -> Result<Vec<v1::RunSummary>, Error> {
        let store = self.store()?;
        let engine = self.engine()?;
        let runs = store.list_runs(&RunFilter {
            limit: query.limit,
            agent: query.agent.clone(),
            user: query.user.clone(),
            tenant: query.tenant.clone(),
            ..RunFilter::default()
        })?;
        runs.into_iter()
            .map(|r| {
                let running = r.status.is_none() && engine.driven_now(&r.id)?;
                Ok(convert::summary(r, running))
            })
            .collect()
    }

    /// A run's events after `after` (its sequence number), in order.
    pub fn run_events(&self, run_id: &str, after: u64) -> Result<Vec<v1::EventRecord>, Error> {
        Ok(self
            .store()?
            .events_after(run_id, after)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The run at the root of this one's tree (itself when it is not a sub-agent's run): the
    /// one to resume, since a sub-agent's run is driven by its parent, under its policies.
    pub fn root_run(&self, run_id: &str) -> Result<String, Error> {
        let store = self.store()?;
        let mut id = run_id.to_owned();
        while let Some(parent) = store.run(&id)?.parent {
            id = parent;
        }
        Ok(id)
    }

    /// Where the run with exactly this id stands.
    pub fn run_status(&self, run_id: &str) -> Result<v1::RunStatus, Error> {
        let store = self.store()?;
        let summary = store.run(run_id)?;
        let running = summary.status.is_none() && self.engine()?.driven_now(run_id)?;
        Ok(convert::summary(summary, running).status)
    }

    /// The tenant of the run with exactly this id.
    pub fn run_tenant(&self, run_id: &str) -> Result<String, Error> {
        Ok(self.store()?.run(run_id)?.tenant)
    }

    /// One run (an id or a unique prefix), with its whole log and its totals.
    pub fn show_run(&self, id: &str) -> Result<v1::RunDetail, Error> {
        let store = self.store()?;
        let engine = self.engine()?;
        let run_id = store.resolve_run_id(id)?;
        let summary = store.run(&run_id)?;
        let running = summary.status.is_none() && engine.driven_now(&run_id)?;
        let events = store.events(&run_id)?;
        let totals = rein_core::RunState::from_events(&events)
            .ok()
            .map(|state| v1::RunTotals {
                steps: state.steps(),
                tool_calls: state.tool_executions(),
                usage: state.usage().into(),
                cost_usd: state.cost_micros() as f64 / 1e6,
                active_ms: state.active_ms(state.last_at_ms()),
            });
        Ok(v1::RunDetail {
            run: convert::summary(summary, running),
            totals,
            events: events.into_iter().map(Into::into).collect(),
        })
    }

    /// Settles the call a `needs_reconciliation` run stopped on: its effect `happened` (with
    /// the tool's `output`), or did not (it is judged and run again when the run is resumed).
    pub async fn reconcile(
        &self,
        id: &str,
        call_id: &str,
        happened: bool,
        output: serde_json::Value,
        by: &str,
        note: Option<String>,
    ) -> Result<String, Error> {
        let run_id = self.store()?.resolve_run_id(id)?;
        let (redactor, durability) = self.run_context(&run_id)?;
        self.engine()?
            .reconcile(
                &run_id, call_id, happened, output, by, note, &redactor, durability,
            )
            .await?;
        Ok(run_id)
    }

    /// Cancels a run: at once if nobody drives it, else at its driver's next step.
    pub async fn cancel_run(&self, id: &str, by: &str) -> Result<v1::CancelOutcome, Error> {
        let run_id = self.store()?.resolve_run_id(id)?;
        let (redactor, durability) = self.run_context(&run_id)?;
        Ok(
            match self
                .engine()?
                .cancel(&run_id, by, &redactor, durability)
                .await?
            {
                rein_engine::Cancelled::Ended(report) => v1::CancelOutcome::Cancelled {
                    report: Box::new(convert::report(*report)),
                },
                rein_engine::Cancelled::Requested => v1::CancelOutcome::Requested { run_id },
            },
        )
    }

    /// What records about a run must pass and honour: the redactor of its agent's secrets and
    /// its agent's durability. A run whose agent cannot be loaded cannot be redacted for, so
    /// nothing is recorded for it.
    pub(crate) fn run_context(&self, run_id: &str) -> Result<(Redactor, Durability), Error> {
        let state = self.engine()?.load(run_id)?;
        let Some(dir) = state.started().and_then(|s| s.agent_dir.clone()) else {
            return Ok((Redactor::default(), Durability::Normal));
        };
        let spec = rein_config::load(Path::new(&dir)).map_err(|e| {
            Error::Invalid(format!(
                "run {run_id}'s agent ({dir}) cannot be loaded, so what would be recorded cannot be checked for its secrets: {e}"
            ))
        })?;
        let (file, required) = self.secrets_file();
        let secrets = rein_engine::secrets::resolve_secrets(
            &spec.secrets,
            self.env(),
            Some(&file),
            required,
        )?;
        Ok((secrets.redactor(), spec.durability))
    }

    /// Builds an agent from its folder's configuration, connecting its MCP servers (their tools'
    /// definitions pinned in the state directory).
    pub(crate) async fn load_agent(&self, spec: &rein_config::AgentSpec) -> Result<Agent, Error> {
        let (file, required) = self.secrets_file();
        let pins = self.dir.mcp_pins(&spec.name);
        Ok(Agent::load(spec, self.env(), Some(&file), required, Some(&pins)).await?)
    }
}

/// Stops an agent's MCP servers.
async fn close(agent: &Agent) {
    for server in &agent.mcp_servers {
        server.shutdown().await;
    }
}
