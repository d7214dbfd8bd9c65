//! The rein command-line interface: a thin face of the engine API (`rein-api`). It parses flags
//! ([`cli`]), reads the process environment (the only place that does), calls the API, and
//! formats what comes back ([`commands`], the live view, the renderer). It holds no logic the
//! library lacks.

/// mimalloc: the gate's policy evaluation and the run loop allocate many small, short-lived
/// values; with it a gate decision takes about a fifth less time than with the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod commands {
    pub(crate) mod agents;
    pub(crate) mod approvals;
    pub(crate) mod audit;
    pub(crate) mod bench;
    pub(crate) mod bench_gateway;
    pub(crate) mod bench_serve;
    pub(crate) mod conversations;
    pub(crate) mod runs;
    pub(crate) mod security;
    pub(crate) mod serve;
}
mod live;
mod out;
mod render;
mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use rein_api::{Faults, Options, Rein, RunQuery, StartRun};

use crate::cli::{
    ApprovalsCommand, AuditCommand, Cli, Command, PolicyCommand, RunsCommand, SchemaCommand,
    TokensCommand, ToolsCommand,
};
use crate::commands::{agents, approvals, audit, bench, conversations, runs, security, serve};

fn main() -> ExitCode {
    // First, before the allocator has touched its arena: a region faulted in before the call
    // keeps its huge pages (parsing the command line alone left three, 6 MiB, in a server).
    small_pages();
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = telemetry::init(serving);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve { workers, .. } = &cli.command {
        builder.worker_threads(workers.unwrap_or_else(default_workers).max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Spans still queued are exported before the process ends.
    drop(telemetry);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A server's request threads: one fewer than the machine's cores, at least one. Every request
/// waits on rein's writer thread (event log, budget ledger and audit trail); with as many request
/// threads as cores they queue behind it. `rein bench gateway` on two cores, the server with
/// one thread against two (3 interleaved rounds): at one request at a time, CPU per request
/// 775-815 µs against 860-890 and added p50 0.74-0.78 ms against 0.82-0.84; at 16 at once about
/// the same (478-495 µs against 455-482, requests/s within 5 %).
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// rein keeps its memory in 4 KiB pages. Where transparent huge pages are on (`always`, or
/// `madvise`, which the allocator asks for), every arena region it touches costs 2 MiB: `rein
/// bench gateway` measured 74-77 MiB resident under load with them and 52 MiB without, at no
/// more CPU per request. The kernel keeps the setting across fork and exec, so the command tools
/// rein starts inherit it. A kernel that refuses leaves things as they were.
fn small_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// The engine API, set up from the flags and the environment.
fn open(cli: &Cli) -> anyhow::Result<Rein> {
    let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    Ok(Rein::new(Options {
        state_dir: cli.state_dir.clone(),
        secrets_file: cli.secrets_file.clone(),
        checkpoint_dir: cli.checkpoint_dir.clone(),
        audit_key_file: cli.audit_key_file.clone(),
        env: Arc::new(|var| std::env::var(var).ok()),
        faults: Faults {
            after_event: read("REIN_FAULT_AFTER_EVENT"),
            after_effect: read("REIN_FAULT_AFTER_EFFECT").and_then(|n| u32::try_from(n).ok()),
        },
    })?)
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    // Commands that need no state directory.
    match &cli.command {
        Command::Schema {
            what: SchemaCommand::Agent,
        } => {
            out::text(&Rein::agent_schema());
            return Ok(0);
        }
        Command::Schema {
            what: SchemaCommand::Openapi,
        } => {
            out::text(&rein_server::openapi_text());
            return Ok(0);
        }
        Command::Bench { what } => return bench::run(what).await,
        Command::Audit {
            command: AuditCommand::VerifyProof { file, public_key },
        } => return audit::verify_proof(file, public_key),
        Command::Attacks {
            catalogue,
            policies,
            no_grants,
            json,
        } => {
            return security::attacks(catalogue.clone(), policies.as_deref(), !*no_grants, *json)
                .await;
        }
        _ => {}
    }
    let rein = open(&cli)?;
    let command = match cli.command {
        Command::Serve {
            listen,
            agents,
            max_body_bytes,
            max_gateway_body_bytes,
            request_timeout_secs,
            rate,
            burst,
            drain_secs,
            max_streams_per_token,
            workers: _,
        } => {
            let serve = serve::Serve {
                listen,
                agents,
                limits: rein_server::Limits {
                    max_body_bytes,
                    max_gateway_body_bytes,
                    request_timeout: std::time::Duration::from_secs(request_timeout_secs.max(1)),
                    rate_per_second: rate,
                    rate_burst: burst,
                    max_streams_per_token,
                },
                drain: std::time::Duration::from_secs(drain_secs),
            };
            return serve::serve(rein, serve).await;
        }
        other => other,
    };
    let rein = &rein;
    match command {
        Command::Conversations { command } => conversations::run(rein, command),
        Command::Tokens { command } => match command {
            TokensCommand::Create {
                tenant,
                user,
                scope,
                expires_in_days,
                json,
            } => serve::create_token(
                rein,
                &tenant,
                user.as_deref(),
                &scope,
                expires_in_days,
                json,
            ),
            TokensCommand::List { tenant, json } => {
                serve::list_tokens(rein, tenant.as_deref(), json)
            }
            TokensCommand::Revoke { id } => serve::revoke_token(rein, &id),
        },
        Command::Run {
            agent_dir,
            task,
            json,
            durability,
            user,
            tenant,
            grants,
        } => {
            let request = StartRun {
                agent_dir,
                task,
                user,
                tenant,
                fsync: durability.map(|d| d.fsync()),
                grants: agents::grants_flag(&grants)?,
            };
            runs::run(rein, request, json).await
        }
        Command::Redteam {
            agent_dir,
            task,
            junit,
            sarif,
            json,
        } => security::redteam(rein, &agent_dir, task, junit, sarif, json).await,
        Command::Runs { command } => match command {
            RunsCommand::List {
                limit,
                agent,
                user,
                tenant,
                json,
            } => runs::list(
                rein,
                RunQuery {
                    limit,
                    agent,
                    user,
                    tenant,
                },
                json,
            ),
            RunsCommand::Show { id, json } => runs::show(rein, &id, json),
            RunsCommand::Resume { id, json } => runs::resume(rein, &id, json).await,
            RunsCommand::Cancel { id, as_name, json } => {
                runs::cancel(rein, &id, &approvals::approver(as_name), json).await
            }
            RunsCommand::Reconcile {
                id,
                call,
                happened,
                did_not_happen: _,
                output,
                note,
                as_name,
            } => {
                let by = approvals::approver(as_name);
                runs::reconcile(rein, &id, &call, happened, &output, note, &by).await
            }
        },
        Command::Usage {
            agent,
            user,
            tenant,
            since,
            json,
        } => runs::usage(rein, agent, user, tenant, since, json),
        Command::Approvals { command } => match command {
            ApprovalsCommand::List { all, json } => approvals::list(rein, all, json),
            ApprovalsCommand::Show { id, json } => approvals::show(rein, &id, json),
            ApprovalsCommand::Approve {
                id,
                note,
                as_name,
                json,
            } => approvals::decide(rein, &id, true, approvals::approver(as_name), note, json).await,
            ApprovalsCommand::Deny {
                id,
                note,
                as_name,
                json,
            } => {
                approvals::decide(rein, &id, false, approvals::approver(as_name), note, json).await
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::Key => audit::key(rein),
            AuditCommand::RotateKey => audit::rotate_key(rein),
            AuditCommand::Verify {
                public_key,
                checkpoint,
                json,
            } => audit::verify(rein, public_key.as_deref(), checkpoint.as_deref(), json),
            AuditCommand::Proof { seq, public_key } => {
                audit::proof(rein, seq, public_key.as_deref())
            }
            AuditCommand::Show { run } => audit::show(rein, &run),
            AuditCommand::Export { since, run } => {
                audit::export(rein, run.as_deref(), since.as_deref())
            }
            AuditCommand::VerifyProof { .. } => unreachable_command(),
        },
        Command::Policy { command } => match command {
            PolicyCommand::Check { agent_dir } => agents::policy_check(rein, &agent_dir).await,
            PolicyCommand::Explain { agent_dir, request } => {
                agents::policy_explain(rein, &agent_dir, *request).await
            }
        },
        Command::Tools {
            command:
                ToolsCommand::List {
                    agent_dir,
                    json,
                    accept_changes,
                },
        } => agents::tools_list(rein, &agent_dir, json, accept_changes).await,
        Command::Schema {
            what: SchemaCommand::Policy { agent_dir },
        } => agents::schema_policy(rein, agent_dir.as_deref()).await,
        Command::Schema {
            what: SchemaCommand::Agent | SchemaCommand::Openapi,
        }
        | Command::Bench { .. }
        | Command::Attacks { .. }
        | Command::Serve { .. } => unreachable_command(),
    }
}

/// Commands answered before the state directory is opened never reach the second match.
fn unreachable_command() -> anyhow::Result<u8> {
    anyhow::bail!("internal error: a command was dispatched twice")
}
