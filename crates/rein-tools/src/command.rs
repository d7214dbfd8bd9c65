//! Command tools: any executable, in any language, that reads its arguments as JSON on stdin and
//! answers one JSON value on stdout.
//!
//! The protocol: rein starts the program in the run's workspace with a small, fixed environment
//! (PATH, HOME, locale, the variables the agent declares, and `REIN_RUN_ID`, `REIN_CALL_ID`,
//! `REIN_TOOL`, `REIN_WORKSPACE`), writes the arguments to its stdin and closes it. Exit status 0
//! with one JSON value on stdout is success. Any other exit status is failure; the message is the
//! `error` field of the JSON it printed, or the end of its stderr. A program that runs past its
//! timeout, or prints more than its output cap, is killed with its whole process group.
//! `REIN_CALL_ID` is stable when rein repeats an idempotent call, so a tool can use it as an
//! idempotency key.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;

use rein_core::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Tool, ToolContext, ToolError, ToolManifest};

/// Environment variables passed through from rein's own environment.
const PASSED_THROUGH: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"];
/// How much of stderr is kept for error messages.
const STDERR_CAP: u64 = 16 * 1024;

/// How to run a command tool.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// The program: a path (already resolved against the agent folder) or a name found on PATH.
    pub program: PathBuf,
    /// Arguments passed to the program.
    pub args: Vec<String>,
    /// Extra environment variables; a value `secret:NAME` is replaced by that secret's value when
    /// the tool starts.
    pub env: BTreeMap<String, String>,
    /// The most bytes the program may print on stdout.
    pub max_output_bytes: usize,
    /// What the program may reach; `None` runs it unsandboxed (where the kernel cannot sandbox
    /// and the operator chose to go on).
    pub sandbox: Option<crate::sandbox::Sandbox>,
}

/// A tool backed by an executable.
#[derive(Debug)]
pub struct CommandTool {
    manifest: ToolManifest,
    spec: CommandSpec,
}

impl CommandTool {
    /// A command tool with this manifest.
    pub fn new(manifest: ToolManifest, spec: CommandSpec) -> CommandTool {
        CommandTool { manifest, spec }
    }
}

/// Kills a process group. Only used on the failure paths (timeout, oversized output).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Tool for CommandTool {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }

    fn call<'a>(
        &'a self,
        ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let program = self.spec.program.display().to_string();
            let mut cmd = tokio::process::Command::new(&self.spec.program);
            cmd.args(&self.spec.args)
                .current_dir(&ctx.workspace)
                .env_clear();
            for key in PASSED_THROUGH {
                if let Some(value) = std::env::var_os(key) {
                    cmd.env(key, value);
                }
            }
            for (key, value) in &self.spec.env {
                // `secret:NAME` is resolved now, as the tool starts; the value lives only in its
                // environment.
                match rein_core::secrets::secret_ref(value) {
                    Some(name) => {
                        cmd.env(key, ctx.secrets.secret(name).map_err(ToolError::Failed)?)
                    }
                    None => cmd.env(key, value),
                };
            }
            // The sandbox (and its proxy and temporary folder) lives until the call ends.
            let prepared = match &self.spec.sandbox {
                Some(sandbox) => Some(
                    crate::sandbox::Prepared::new(
                        sandbox,
                        &self.spec.program,
                        &self.spec.args,
                        &ctx.workspace,
                    )
                    .await
                    .map_err(|e| ToolError::Failed(format!("cannot sandbox `{program}`: {e}")))?,
                ),
                None => None,
            };
            if let Some(prepared) = &prepared {
                prepared.apply(&mut cmd);
            }
            cmd.env("REIN_RUN_ID", &ctx.run_id)
                .env("REIN_CALL_ID", &ctx.call_id)
                .env("REIN_TOOL", &self.manifest.name)
                .env("REIN_WORKSPACE", &ctx.workspace)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .process_group(0);
            let mut child = cmd
                .spawn()
                .map_err(|e| ToolError::Failed(format!("cannot start `{program}`: {e}")))?;
            let pid = child.id();
            let input = serde_json::to_vec(&args).unwrap_or_default();
            let (stdin, stdout, stderr) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take());
            let cap = self.spec.max_output_bytes;

            let work = async {
                let write = async {
                    if let Some(mut stdin) = stdin {
                        // A program that exits without reading its input is not an error here.
                        let _ = stdin.write_all(&input).await;
                    }
                };
                let read_out = async {
                    let mut buf = Vec::new();
                    if let Some(out) = stdout {
                        let _ = out.take(cap as u64 + 1).read_to_end(&mut buf).await;
                    }
                    if buf.len() > cap {
                        // Stop the program now, or it may block writing and never exit.
                        kill_group(pid);
                    }
                    buf
                };
                let read_err = async {
                    let mut buf = Vec::new();
                    if let Some(err) = stderr {
                        let _ = err.take(STDERR_CAP).read_to_end(&mut buf).await;
                    }
                    buf
                };
                let ((), out, err) = tokio::join!(write, read_out, read_err);
                let status = child.wait().await;
                (status, out, err)
            };
            let (status, out, err) = match tokio::time::timeout(self.manifest.timeout, work).await {
                Ok(done) => done,
                Err(_) => {
                    kill_group(pid);
                    return Err(ToolError::Timeout(self.manifest.timeout));
                }
            };
            if out.len() > cap {
                return Err(ToolError::OutputTooLarge(cap));
            }
            let status = status.map_err(|e| {
                ToolError::Failed(format!("`{program}` could not be waited for: {e}"))
            })?;
            let text = String::from_utf8_lossy(&out);
            let parsed = serde_json::from_str::<Value>(text.trim());
            if let (None, Some(signal)) = (status.code(), status.signal()) {
                return Err(ToolError::Interrupted(format!(
                    "`{}` was killed by signal {signal} before it finished; whether it had its effect is unknown",
                    self.manifest.name
                )));
            }
            if !status.success() {
                let how = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exited with status {code}"),
                    (None, Some(signal)) => format!("was killed by signal {signal}"),
                    _ => "failed".to_owned(),
                };
                let reason = parsed
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                    .or_else(|| {
                        let err = String::from_utf8_lossy(&err);
                        let tail: Vec<&str> = err.trim().lines().rev().take(5).collect();
                        (!tail.is_empty())
                            .then(|| tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                    })
                    .unwrap_or_else(|| "no message".into());
                return Err(ToolError::Failed(format!(
                    "`{}` {how}: {reason}",
                    self.manifest.name
                )));
            }
            if text.trim().is_empty() {
                return Err(ToolError::BadOutput("the program printed nothing; a command tool must print one JSON value on stdout".into()));
            }
            parsed.map_err(|e| {
                let start: String = text.trim().chars().take(80).collect();
                ToolError::BadOutput(format!(
                    "stdout is not one JSON value ({e}); it began: {start:?}"
                ))
            })
        })
    }
}
