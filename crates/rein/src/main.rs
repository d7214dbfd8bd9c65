//! The rein command-line interface: run agents, inspect and resume runs, print schemas and
//! measure rein's own costs. All logic lives in the library crates; this file parses flags,
//! wires them to the engine and prints.

/// mimalloc: the gate's policy evaluation and the run loop allocate many small, short-lived
/// values; with it a gate decision takes about a fifth less time than with the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit_cmds;
mod gate_cmds;
mod render;
mod tools_cmds;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use rein_core::{Durability, StoredEvent};
use rein_engine::{Agent, Engine, FaultPlan, Observer, RunReport};
use rein_store::{SqliteStore, Store};

use crate::render::Renderer;

/// The production harness for AI agents.
#[derive(Debug, Parser)]
#[command(name = "rein", version, about, long_about = None)]
struct Cli {
    /// Where runs are recorded.
    #[arg(long, global = true, env = "REIN_STATE_DIR", default_value = ".rein")]
    state_dir: PathBuf,
    /// A TOML file of `name = "value"` secrets (mode 600); default: secrets.toml in the state
    /// directory, when it exists. `REIN_SECRET_<NAME>` variables take precedence.
    #[arg(long, global = true, env = "REIN_SECRETS_FILE")]
    secrets_file: Option<PathBuf>,
    /// Also write each signed audit checkpoint to this directory (for example one that is
    /// copied off the machine).
    #[arg(long, global = true, env = "REIN_AUDIT_CHECKPOINT_DIR")]
    checkpoint_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an agent folder on a task.
    Run {
        /// The agent folder (holding agent.toml).
        agent_dir: PathBuf,
        /// The task; defaults to the agent's `default_task`.
        #[arg(long)]
        task: Option<String>,
        /// Print one JSON object at the end instead of the live view.
        #[arg(long)]
        json: bool,
        /// Override the agent's durability.
        #[arg(long, value_enum)]
        durability: Option<DurabilityArg>,
        /// Who the run acts for (`context.user` in policies).
        #[arg(long, env = "REIN_USER", default_value = "anonymous")]
        user: String,
        /// The tenant the run belongs to (`context.tenant`).
        #[arg(long, env = "REIN_TENANT", default_value = "default")]
        tenant: String,
    },
    /// List, show, approve and deny approval requests.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// The audit trail: its key, verification, proofs, and reading it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check policies and explain decisions.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// List, show and resume runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The tools an agent has: built-in, command, sub-agent and MCP.
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Spending against budgets: tokens and money per agent, user, tenant and run, per period.
    Usage {
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only periods from this one on (`2026-11-01`, `2026-11`).
        #[arg(long)]
        since: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a file rein reads.
    Schema {
        #[command(subcommand)]
        what: SchemaCommand,
    },
    /// Measure rein's own costs on this machine.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ToolsCommand {
    /// Every tool with its source, arguments, labels and the verdict the policies give it by
    /// default. Connects to the agent's MCP servers to list theirs.
    List {
        /// The agent folder.
        agent_dir: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Accept the current definitions of MCP tools that changed since they were pinned.
        #[arg(long)]
        accept_changes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// The most recent runs.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// A run's timeline: steps, tool calls with arguments and outcomes, durations, tokens.
    Show {
        /// The run id (or a unique prefix).
        id: String,
        /// As JSON: the summary and every event.
        #[arg(long)]
        json: bool,
    },
    /// Settle the call a `needs_reconciliation` run stopped on, then resume it.
    Reconcile {
        /// The run id (or a unique prefix).
        id: String,
        /// The call in doubt (the run's report names it).
        #[arg(long)]
        call: String,
        /// Its effect happened.
        #[arg(
            long,
            conflicts_with = "did_not_happen",
            required_unless_present = "did_not_happen"
        )]
        happened: bool,
        /// Its effect did not happen: judge and run it again.
        #[arg(long)]
        did_not_happen: bool,
        /// What the tool returned, as JSON, when it happened.
        #[arg(long, default_value = "{}")]
        output: String,
        /// Why, or how you checked.
        #[arg(long)]
        note: Option<String>,
        /// Who settles it (default: the login name).
        #[arg(long = "as")]
        as_name: Option<String>,
    },
    /// Continue a run from its log after a crash or a stop.
    Resume {
        /// The run id (or a unique prefix).
        id: String,
        /// Print one JSON object at the end instead of the live view.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// agent.toml (JSON Schema).
    Agent,
    /// The Cedar schema policies are validated against; with an agent folder, including its
    /// tools' actions and argument types.
    Policy {
        /// The agent folder.
        agent_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// Pending approval requests (all of them with --all).
    List {
        /// Decided ones too.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The approval card: the tool, its exact arguments, and the policies that asked.
    Show {
        /// The approval id (or a unique prefix).
        id: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let the call run.
    Approve {
        /// The approval id (or a unique prefix).
        id: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
        /// Who decides (default: the login name).
        #[arg(long = "as")]
        as_name: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refuse the call; the model is told.
    Deny {
        /// The approval id (or a unique prefix).
        id: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
        /// Who decides (default: the login name).
        #[arg(long = "as")]
        as_name: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// The public key that signs checkpoints (created on first use).
    Key,
    /// Replace the signing key; the rotation is recorded and signed with the old key.
    RotateKey,
    /// Recompute the whole log and check every checkpoint; exit 3 on the first failure.
    Verify {
        /// The trusted public key (`rein audit key` output); default this machine's own key.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// An inclusion proof of one record and its signed checkpoint, as JSON.
    Proof {
        /// The record's number.
        seq: u64,
        /// The trusted public key; default this machine's own key.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Check a proof offline, with nothing but the proof and the public key.
    VerifyProof {
        /// The proof file.
        file: PathBuf,
        /// The public key to trust.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// A run's audit records, readable.
    Show {
        /// The run id (or a prefix).
        #[arg(long)]
        run: String,
    },
    /// Audit records as JSON lines.
    Export {
        /// Only records from this time on: milliseconds since the epoch, or YYYY-MM-DD.
        #[arg(long)]
        since: Option<String>,
        /// Only this run's records (an id or a prefix).
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate an agent's policies and the examples they carry.
    Check {
        /// The agent folder.
        agent_dir: PathBuf,
    },
    /// The verdict for a request, and the policies that decided it.
    Explain {
        /// The agent folder.
        agent_dir: PathBuf,
        /// The tool called.
        #[arg(long, conflicts_with = "model")]
        tool: Option<String>,
        /// Or: the model called.
        #[arg(long)]
        model: Option<String>,
        /// The arguments, as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
        /// A label in play (repeat for several).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// `context.user`.
        #[arg(long, default_value = "anonymous")]
        user: String,
        /// `context.tenant`.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Judge as if approved by this person.
        #[arg(long)]
        approved_by: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Audit log append rate (durable) and verification rate.
    Audit {
        /// Records to append and verify.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// What budget accounting and context building cost per model step.
    Controls {
        /// Steps to measure (the conversation grows by one tool output each).
        #[arg(long, default_value_t = 500)]
        steps: usize,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Gate decision latency with N generated policies.
    Gate {
        /// Policies to generate.
        #[arg(long, default_value_t = 100)]
        policies: usize,
        /// Decisions to time.
        #[arg(long, default_value_t = 20_000)]
        decisions: usize,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The runtime's cost per durable tool step (scripted model, no-op tool).
    Steps {
        /// Runs in all.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Runs at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Tool steps per run.
        #[arg(long, default_value_t = 50)]
        steps: u32,
        /// Commit durability.
        #[arg(long, value_enum, default_value_t = DurabilityArg::Normal)]
        durability: DurabilityArg,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Survives a killed process.
    Normal,
    /// Also survives power loss.
    Fsync,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::Normal => Durability::Normal,
            DurabilityArg::Fsync => Durability::Fsync,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REIN_LOG")
                .unwrap_or_else(|_| "off".into()),
        )
        // Each span (invoke_agent, chat, execute_tool) is printed with its attributes as it closes.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let (state_dir, secrets_file) = (cli.state_dir.clone(), cli.secrets_file.clone());
    let secrets = SecretsAt {
        state_dir: &state_dir,
        file: secrets_file.as_deref(),
    };
    match cli.command {
        Command::Run {
            agent_dir,
            task,
            json,
            durability,
            user,
            tenant,
        } => {
            let args = RunArgs {
                agent_dir,
                task,
                json,
                durability: durability.map(Into::into),
                user,
                tenant,
            };
            run(
                &cli.state_dir,
                cli.secrets_file.as_deref(),
                cli.checkpoint_dir.as_deref(),
                args,
            )
            .await
        }
        Command::Runs {
            command: RunsCommand::List { limit, json },
        } => list(&cli.state_dir, limit, json),
        Command::Runs {
            command: RunsCommand::Show { id, json },
        } => show(&cli.state_dir, &id, json),
        Command::Runs {
            command: RunsCommand::Resume { id, json },
        } => {
            resume(
                &cli.state_dir,
                &id,
                json,
                cli.secrets_file.as_deref(),
                cli.checkpoint_dir.as_deref(),
            )
            .await
        }
        Command::Schema {
            what: SchemaCommand::Policy { agent_dir },
        } => gate_cmds::schema_policy(agent_dir.as_deref(), &secrets).await,
        Command::Usage {
            agent,
            user,
            tenant,
            since,
            json,
        } => usage(&state_dir, agent, user, tenant, since, json),
        Command::Tools {
            command:
                ToolsCommand::List {
                    ref agent_dir,
                    json,
                    accept_changes,
                },
        } => tools_cmds::tools_list(agent_dir, &secrets, json, accept_changes).await,
        Command::Bench {
            what: BenchCommand::Controls { steps, json },
        } => {
            let dir = tempfile::tempdir()?;
            let r = rein_engine::bench::bench_controls(dir.path(), steps)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} steps\n  budget accounting (reserve + settle on {} ledger lines, durable): p50 {:.1} µs · p99 {:.1} µs\n  context building (tiktoken counts + compaction to 8,000 tokens; {} messages, {} outputs elided at the end): p50 {:.1} µs · p99 {:.1} µs",
                    r.steps,
                    r.budget_lines,
                    r.budget_p50_us,
                    r.budget_p99_us,
                    r.final_messages,
                    r.final_elided,
                    r.context_p50_us,
                    r.context_p99_us
                );
            }
            Ok(0)
        }
        Command::Bench {
            what:
                BenchCommand::Gate {
                    policies,
                    decisions,
                    json,
                },
        } => gate_cmds::bench_gate(policies, decisions, json),
        Command::Runs {
            command:
                RunsCommand::Reconcile {
                    id,
                    call,
                    happened,
                    did_not_happen: _,
                    output,
                    note,
                    as_name,
                },
        } => {
            let store = open_store(&cli.state_dir, Durability::Normal)?;
            let run_id = store.resolve_run_id(&id)?;
            let output: serde_json::Value = serde_json::from_str(&output)
                .with_context(|| format!("--output is not JSON: {output}"))?;
            let engine = with_audit(
                Engine::new(store, &cli.state_dir),
                &cli.state_dir,
                cli.checkpoint_dir.as_deref(),
                Durability::Normal,
            )?;
            let by = gate_cmds::approver(as_name);
            engine
                .reconcile(&run_id, &call, happened, output, &by, note)
                .await?;
            println!(
                "call {call} of run {run_id} settled by {by}; continue with: rein runs resume {run_id}"
            );
            Ok(0)
        }
        Command::Audit { command } => match command {
            AuditCommand::Key => audit_cmds::key(&cli.state_dir),
            AuditCommand::RotateKey => audit_cmds::rotate_key(&cli.state_dir),
            AuditCommand::Verify { public_key, json } => {
                audit_cmds::verify(&cli.state_dir, public_key.as_deref(), json)
            }
            AuditCommand::Proof { seq, public_key } => {
                audit_cmds::proof(&cli.state_dir, seq, public_key.as_deref())
            }
            AuditCommand::VerifyProof { file, public_key } => {
                audit_cmds::verify_proof(&file, &public_key)
            }
            AuditCommand::Show { run } => audit_cmds::show(&cli.state_dir, &run),
            AuditCommand::Export { since, run } => {
                audit_cmds::export(&cli.state_dir, run.as_deref(), since.as_deref())
            }
        },
        Command::Bench {
            what: BenchCommand::Audit { records, json },
        } => audit_cmds::bench(records, json),
        Command::Approvals { command } => match command {
            ApprovalsCommand::List { all, json } => {
                gate_cmds::approvals_list(&cli.state_dir, all, json)
            }
            ApprovalsCommand::Show { id, json } => {
                gate_cmds::approvals_show(&cli.state_dir, &id, json)
            }
            ApprovalsCommand::Approve {
                id,
                note,
                as_name,
                json,
            } => {
                gate_cmds::approvals_decide(
                    &cli.state_dir,
                    &id,
                    true,
                    gate_cmds::approver(as_name),
                    note,
                    json,
                    cli.checkpoint_dir.as_deref(),
                )
                .await
            }
            ApprovalsCommand::Deny {
                id,
                note,
                as_name,
                json,
            } => {
                gate_cmds::approvals_decide(
                    &cli.state_dir,
                    &id,
                    false,
                    gate_cmds::approver(as_name),
                    note,
                    json,
                    cli.checkpoint_dir.as_deref(),
                )
                .await
            }
        },
        Command::Policy {
            command: PolicyCommand::Check { agent_dir },
        } => gate_cmds::policy_check(&agent_dir, &secrets).await,
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    agent_dir,
                    tool,
                    model,
                    args,
                    labels,
                    user,
                    tenant,
                    approved_by,
                    json,
                },
        } => {
            gate_cmds::policy_explain(
                &agent_dir,
                &secrets,
                gate_cmds::Explain {
                    tool,
                    model,
                    args,
                    labels,
                    user,
                    tenant,
                    approved_by,
                    json,
                },
            )
            .await
        }
        Command::Schema {
            what: SchemaCommand::Agent,
        } => {
            print!("{}", rein_config::agent_schema());
            Ok(0)
        }
        Command::Bench {
            what:
                BenchCommand::Steps {
                    runs,
                    concurrency,
                    steps,
                    durability,
                    json,
                },
        } => bench_steps(runs, concurrency, steps, durability.into(), json).await,
    }
}

/// Where secrets come from: the file named on the command line (which must exist), else
/// secrets.toml in the state directory if there is one.
pub(crate) struct SecretsAt<'a> {
    pub(crate) state_dir: &'a Path,
    pub(crate) file: Option<&'a Path>,
}

impl SecretsAt<'_> {
    /// The secrets file to read, and whether it must exist.
    pub(crate) fn file(&self) -> (PathBuf, bool) {
        match self.file {
            Some(f) => (f.to_owned(), true),
            None => (self.state_dir.join("secrets.toml"), false),
        }
    }
}

/// Loads an agent, connecting its MCP servers (their tools' fingerprints are pinned in the
/// state directory).
async fn load_agent(dir: &Path, secrets: &SecretsAt<'_>) -> anyhow::Result<(Agent, Durability)> {
    let spec = rein_config::load(dir)?;
    let (file, required) = secrets.file();
    let pins = rein_mcp::pins_path(secrets.state_dir, &spec.name);
    let agent = Agent::load(
        &spec,
        &|var| std::env::var(var).ok(),
        Some(&file),
        required,
        Some(&pins),
    )
    .await?;
    Ok((agent, spec.durability))
}

/// Stops the agent's MCP servers.
async fn close_agent(agent: &Agent) {
    for server in &agent.mcp_servers {
        server.shutdown().await;
    }
}

/// Every engine rein's commands build records into the state directory's audit log.
fn with_audit(
    engine: Engine,
    state_dir: &Path,
    checkpoint_dir: Option<&Path>,
    durability: Durability,
) -> anyhow::Result<Engine> {
    let log = audit_cmds::open_log(state_dir, checkpoint_dir, durability == Durability::Fsync)?;
    Ok(engine.with_audit(Arc::new(log)))
}

fn open_store(state_dir: &Path, durability: Durability) -> anyhow::Result<Arc<SqliteStore>> {
    Ok(Arc::new(SqliteStore::open(state_dir, durability)?))
}

/// Fault injection for crash tests: `REIN_FAULT_AFTER_EVENT=N` or `REIN_FAULT_AFTER_EFFECT=N`
/// make the process stop (and wait to be killed) at that point. Not for production use.
fn faults_from_env() -> FaultPlan {
    let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let plan = FaultPlan {
        after_event: read("REIN_FAULT_AFTER_EVENT"),
        after_effect: read("REIN_FAULT_AFTER_EFFECT").map(|n: u64| n as u32),
        stop: None,
    };
    if plan.after_event.is_none() && plan.after_effect.is_none() {
        return plan;
    }
    FaultPlan {
        stop: Some(Arc::new(|| {
            eprintln!("rein: fault injection point reached; waiting to be killed");
            loop {
                std::thread::park();
            }
        })),
        ..plan
    }
}

/// Prints each event as it happens (the live view).
struct LiveView {
    renderer: Mutex<Renderer>,
    to_stderr: bool,
}

impl Observer for LiveView {
    fn on_event(&self, run_id: &str, event: &StoredEvent) {
        if let Ok(mut renderer) = self.renderer.lock() {
            if self.to_stderr {
                renderer.write(&mut std::io::stderr().lock(), run_id, event);
            } else {
                renderer.write(&mut std::io::stdout().lock(), run_id, event);
            }
        }
    }
}

fn color_for(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none()
}

/// The live view: on stdout normally; with `--json` only on stderr, and only for a person at a
/// terminal, so that stdout carries exactly one JSON object.
fn live_view(json: bool) -> Option<LiveView> {
    if json {
        let terminal = std::io::stderr().is_terminal();
        terminal.then(|| LiveView {
            renderer: Mutex::new(Renderer::new(color_for(true), false)),
            to_stderr: true,
        })
    } else {
        Some(LiveView {
            renderer: Mutex::new(Renderer::new(
                color_for(std::io::stdout().is_terminal()),
                false,
            )),
            to_stderr: false,
        })
    }
}

fn finish(report: &RunReport, json: bool) -> anyhow::Result<u8> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "  {} steps · {} tool calls · {} in / {} out tokens · ${:.6} · {}",
            report.steps,
            report.tool_calls,
            report.usage.input_tokens,
            report.usage.output_tokens,
            report.cost_usd,
            render::fmt_ms(report.active_ms)
        );
        if report.status != rein_core::EndState::Completed
            && (!report.completed.is_empty() || !report.not_completed.is_empty())
        {
            let list = |items: &[String]| {
                if items.is_empty() {
                    "none".to_owned()
                } else {
                    items.join(", ")
                }
            };
            let _ = writeln!(out, "  completed: {}", list(&report.completed));
            let _ = writeln!(out, "  not completed: {}", list(&report.not_completed));
        }
        let _ = writeln!(out, "  details: rein runs show {}", report.run_id);
    }
    u8::try_from(report.status.exit_code()).context("exit code out of range")
}

/// What `rein run` was asked.
struct RunArgs {
    agent_dir: PathBuf,
    task: Option<String>,
    json: bool,
    durability: Option<Durability>,
    user: String,
    tenant: String,
}

async fn run(
    state_dir: &Path,
    secrets_file: Option<&Path>,
    checkpoint_dir: Option<&Path>,
    args: RunArgs,
) -> anyhow::Result<u8> {
    let RunArgs {
        agent_dir,
        task,
        json,
        durability,
        user,
        tenant,
    } = args;
    let agent_dir = agent_dir.as_path();
    let spec = rein_config::load(agent_dir)?;
    let task = match task.or_else(|| spec.default_task.clone()) {
        Some(t) if !t.trim().is_empty() => t,
        _ => bail!(
            "no task: pass --task \"...\" or set `default_task` in {}",
            spec.dir.join(rein_config::AGENT_FILE).display()
        ),
    };
    let (agent, agent_durability) = load_agent(
        agent_dir,
        &SecretsAt {
            state_dir,
            file: secrets_file,
        },
    )
    .await?;
    let durability = durability.unwrap_or(agent_durability);
    let store = open_store(state_dir, durability)?;
    let engine = with_audit(
        Engine::new(store, state_dir),
        state_dir,
        checkpoint_dir,
        durability,
    )?
    .with_faults(faults_from_env());
    let request = rein_engine::RunRequest {
        task,
        user,
        tenant,
        parent: None,
    };
    let view = live_view(json);
    let report = match &view {
        Some(view) => engine.start(&agent, request, view).await,
        None => {
            engine
                .start(&agent, request, &rein_engine::NoObserver)
                .await
        }
    };
    close_agent(&agent).await;
    finish(&report?, json)
}

async fn resume(
    state_dir: &Path,
    id: &str,
    json: bool,
    secrets_file: Option<&Path>,
    checkpoint_dir: Option<&Path>,
) -> anyhow::Result<u8> {
    let store = open_store(state_dir, Durability::Normal)?;
    let run_id = store.resolve_run_id(id)?;
    let engine = Engine::new(store.clone(), state_dir);
    let state = engine.load(&run_id)?;
    let Some(agent_dir) = state.started().and_then(|s| s.agent_dir.clone()) else {
        bail!(
            "run {run_id} was started by a program, not from an agent folder; resume it from that program"
        );
    };
    let (agent, durability) = load_agent(
        Path::new(&agent_dir),
        &SecretsAt {
            state_dir,
            file: secrets_file,
        },
    )
    .await
    .with_context(|| format!("loading the agent of run {run_id}"))?;
    drop(engine);
    drop(store);
    let store = open_store(state_dir, durability)?;
    let engine = with_audit(
        Engine::new(store, state_dir),
        state_dir,
        checkpoint_dir,
        durability,
    )?
    .with_faults(faults_from_env());
    let view = live_view(json);
    let report = match &view {
        Some(view) => engine.resume(&run_id, &agent, view).await,
        None => {
            engine
                .resume(&run_id, &agent, &rein_engine::NoObserver)
                .await
        }
    };
    close_agent(&agent).await;
    finish(&report?, json)
}

fn list(state_dir: &Path, limit: usize, json: bool) -> anyhow::Result<u8> {
    let store = open_store(state_dir, Durability::Normal)?;
    let runs = store.list_runs(limit)?;
    if json {
        println!("{}", serde_json::to_string(&runs)?);
        return Ok(0);
    }
    if runs.is_empty() {
        println!("no runs yet in {}", state_dir.display());
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<32}  {:<16}  {:<20}  {:>5}  {:>6}  {:>9}  task",
        "run", "agent", "status", "steps", "events", "duration"
    );
    for r in runs {
        let status = r.status.map(|s| s.as_str()).unwrap_or("unfinished");
        let _ = writeln!(
            out,
            "{:<32}  {:<16}  {:<20}  {:>5}  {:>6}  {:>9}  {}",
            r.id,
            render::one_line(&r.agent, 16),
            status,
            r.steps,
            r.events,
            render::fmt_ms(r.updated_ms.saturating_sub(r.created_ms)),
            render::one_line(&r.task, 60)
        );
    }
    Ok(0)
}

fn show(state_dir: &Path, id: &str, json: bool) -> anyhow::Result<u8> {
    let store = open_store(state_dir, Durability::Normal)?;
    let run_id = store.resolve_run_id(id)?;
    let summary = store.run(&run_id)?;
    let events = store.events(&run_id)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"run": summary, "events": events}))?
        );
        return Ok(0);
    }
    let state = rein_core::RunState::from_events(&events).ok();
    let mut renderer = Renderer::new(color_for(std::io::stdout().is_terminal()), true);
    let mut out = std::io::stdout().lock();
    for event in &events {
        renderer.write(&mut out, &run_id, event);
    }
    if let Some(state) = state {
        let usage = state.usage();
        let status = state
            .ended()
            .map(|e| e.status.as_str())
            .unwrap_or("unfinished (resume it with `rein runs resume`)");
        let _ = writeln!(
            out,
            "\n{status} · {} steps · {} tool calls · {} in / {} out tokens · ${:.6} · active {} · {} events",
            state.steps(),
            state.tool_executions(),
            usage.input_tokens,
            usage.output_tokens,
            state.cost_micros() as f64 / 1e6,
            render::fmt_ms(state.active_ms(state.last_at_ms())),
            events.len()
        );
    }
    Ok(0)
}

/// `rein usage`: the budget ledger's lines, filtered.
fn usage(
    state_dir: &Path,
    agent: Option<String>,
    user: Option<String>,
    tenant: Option<String>,
    since: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    let ledger = rein_store::BudgetLedger::open(state_dir)?;
    let wanted: Vec<String> = [("agent", agent), ("user", user), ("tenant", tenant)]
        .into_iter()
        .filter_map(|(scope, name)| name.map(|n| format!("{scope}:{n}")))
        .collect();
    let rows: Vec<rein_store::UsageRow> = ledger
        .usage("")?
        .into_iter()
        .filter(|r| wanted.is_empty() || wanted.contains(&r.key))
        .filter(|r| {
            since
                .as_deref()
                .is_none_or(|s| r.period == "run" || r.period.as_str() >= s)
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!(
            "no spending recorded yet (budgets are kept when an agent declares [budget] or [[budgets]])"
        );
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:44} {:10} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "budget", "period", "calls", "tokens", "of tokens", "usd", "of usd"
    );
    for r in rows {
        let of = |v: Option<u64>, money: bool| match v {
            Some(v) if money => format!("{:.6}", v as f64 / 1e6),
            Some(v) => v.to_string(),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:44} {:10} {:>6} {:>12} {:>12} {:>12.6} {:>12}",
            r.key,
            r.period,
            r.calls,
            r.tokens,
            of(r.max_tokens, false),
            r.cost_micros as f64 / 1e6,
            of(r.max_cost_micros, true)
        );
    }
    Ok(0)
}

async fn bench_steps(
    runs: usize,
    concurrency: usize,
    steps: u32,
    durability: Durability,
    json: bool,
) -> anyhow::Result<u8> {
    let dir = tempfile::tempdir().context("creating a scratch directory for the benchmark")?;
    let options = rein_engine::bench::BenchOptions {
        runs,
        concurrency,
        steps,
        durability,
    };
    let report = rein_engine::bench::bench_steps(dir.path(), options).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} runs × {} steps, {} at once, durability {:?}\n  {:.0} steps/s · p50 {} µs · p99 {} µs · max {} µs · {} bytes/step · peak RSS {} KiB · {} ms",
            report.runs,
            report.steps_per_run,
            report.concurrency,
            report.durability,
            report.steps_per_s,
            report.p50_us,
            report.p99_us,
            report.max_us,
            report.bytes_per_step,
            report.peak_rss_kb,
            report.elapsed_ms
        );
    }
    Ok(0)
}
