//! Tools for rein behind one [`Tool`] trait.
//!
//! Each tool carries a [`ToolManifest`]: its name, what it does, the JSON Schema of its arguments,
//! whether repeating it is safe, and how long it may run. The [`ToolRegistry`] holds an agent's
//! tools and checks every proposed call (the tool exists, the arguments match the schema) before
//! anything runs. Built in: `fs.read` and `fs.write`, confined to the run's workspace, and
//! `http.get`, limited to an allowlist of hosts. [`CommandTool`] runs any executable that reads
//! JSON arguments on stdin and answers JSON on stdout, so tools can be written in any language.

mod command;
mod fs;
mod http;
mod memory;
mod registry;
pub mod sandbox;

use std::path::PathBuf;
use std::time::Duration;

use rein_core::BoxFuture;
use serde_json::Value;

pub use command::{CommandSpec, CommandTool};
pub use fs::{FsRead, FsWrite};
pub use http::{HttpGet, host_allowed};
pub use memory::{Memory, MemoryRead, MemoryScope, MemoryWrite};
pub use registry::{Rejection, ToolRegistry, ToolRegistryError};

/// What rein and the model know about a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolManifest {
    /// The name the model calls it by (for example `fs.read`).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments; must describe an object.
    pub parameters: Value,
    /// Whether running it twice with the same arguments has the same effect as running it once.
    /// Only idempotent tools are repeated when a crash leaves their outcome unknown.
    pub idempotent: bool,
    /// How long one call may run before it is stopped.
    pub timeout: Duration,
}

/// Where tools get secret values, by name, at the moment they run.
pub trait SecretSource: Send + Sync {
    /// The value of a secret, or why it is not available.
    fn secret(&self, name: &str) -> Result<String, String>;
}

/// A source with no secrets.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn secret(&self, name: &str) -> Result<String, String> {
        Err(format!("secret `{name}` is not configured"))
    }
}

/// Where and for whom a tool call runs.
#[derive(Clone)]
pub struct ToolContext {
    /// The run's workspace directory; file tools cannot leave it.
    pub workspace: PathBuf,
    /// The run's id.
    pub run_id: String,
    /// The call's id, stable across retries of the same call (an idempotency key).
    pub call_id: String,
    /// Where `secret:` references are resolved.
    pub secrets: std::sync::Arc<dyn SecretSource>,
    /// Where the tool reports what the run should record besides its result (a server that
    /// restarted, a result that was cut).
    pub notices: Notices,
    /// The run's memory (session, agent, user), for the memory tools.
    pub memory: Option<std::sync::Arc<dyn Memory>>,
}

/// Something a tool reports during a call, recorded by the engine as a `notice` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolNotice {
    /// What happened, in snake_case.
    pub kind: String,
    /// What it is about (a server, a tool).
    pub subject: String,
    /// For people.
    pub detail: String,
}

/// The notices of one call, shared between the tool and the engine.
#[derive(Debug, Clone, Default)]
pub struct Notices(std::sync::Arc<std::sync::Mutex<Vec<ToolNotice>>>);

impl Notices {
    /// Adds a notice.
    pub fn push(&self, kind: &str, subject: &str, detail: impl Into<String>) {
        let notice = ToolNotice {
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            detail: detail.into(),
        };
        match self.0.lock() {
            Ok(mut list) => list.push(notice),
            Err(poisoned) => poisoned.into_inner().push(notice),
        }
    }

    /// Takes every notice so far.
    pub fn take(&self) -> Vec<ToolNotice> {
        match self.0.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl std::fmt::Debug for ToolContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolContext")
            .field("workspace", &self.workspace)
            .field("run_id", &self.run_id)
            .field("call_id", &self.call_id)
            .finish()
    }
}

/// Why a tool call failed. The message goes back to the model as the call's result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    /// The call was refused by the tool's own rules (a path outside the workspace, a host not on
    /// the allowlist).
    #[error("refused: {0}")]
    Refused(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
    /// The tool ran longer than its timeout and was stopped.
    #[error("timed out after {} ms and was stopped", .0.as_millis())]
    Timeout(Duration),
    /// The tool's output was larger than allowed.
    #[error("output exceeded {0} bytes and was discarded")]
    OutputTooLarge(usize),
    /// The tool's output was not what the protocol requires.
    #[error("bad output: {0}")]
    BadOutput(String),
    /// The tool stopped without a known outcome: its process was killed, or its server's
    /// connection broke during the call. Its effect may have happened.
    #[error("{0}")]
    Interrupted(String),
}

impl ToolError {
    /// Whether the call may have had its effect although it did not succeed: it timed out or
    /// was interrupted. For a tool that is not idempotent such a call is in doubt.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ToolError::Timeout(_) | ToolError::Interrupted(_))
    }
}

/// A tool an agent can call.
pub trait Tool: Send + Sync {
    /// The tool's manifest.
    fn manifest(&self) -> &ToolManifest;
    /// Runs the tool with arguments that already match its schema.
    fn call<'a>(
        &'a self,
        ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>>;
}

impl std::fmt::Debug for dyn Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tool({})", self.manifest().name)
    }
}

/// A tool that does nothing and answers `{}` at once: the runtime's own cost per step is measured
/// with it (`rein bench steps`).
#[derive(Debug)]
pub struct Noop {
    manifest: ToolManifest,
}

impl Default for Noop {
    fn default() -> Self {
        Noop {
            manifest: ToolManifest {
                name: "noop".into(),
                description: "Does nothing.".into(),
                parameters: serde_json::json!({"type": "object", "properties": {}}),
                idempotent: true,
                timeout: Duration::from_secs(1),
            },
        }
    }
}

/// A tool a gateway's client runs itself: rein judges its calls and hands the allowed ones to
/// the client, so the engine never calls it (a call here is a bug, reported as a failure).
#[derive(Debug)]
pub struct ClientTool {
    manifest: ToolManifest,
}

impl ClientTool {
    /// A client tool with this manifest.
    pub fn new(manifest: ToolManifest) -> ClientTool {
        ClientTool { manifest }
    }
}

impl Tool for ClientTool {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }
    fn call<'a>(
        &'a self,
        _ctx: &'a ToolContext,
        _args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(std::future::ready(Err(ToolError::Failed(format!(
            "`{}` is run by the gateway's client, not by rein",
            self.manifest.name
        )))))
    }
}

impl Tool for Noop {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }
    fn call<'a>(
        &'a self,
        _ctx: &'a ToolContext,
        _args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(std::future::ready(Ok(Value::Object(Default::default()))))
    }
}
