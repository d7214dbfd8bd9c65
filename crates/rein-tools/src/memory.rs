//! `memory.read` and `memory.write`: notes (key → text) the model keeps in session memory (this
//! run and its sub-agents), agent memory (every run of the agent) or user memory (every run of
//! the agent for this user). They are tools like any other, so every read and write is judged by
//! the gate (`action == Action::"memory.write"` with `context.args.scope`); where the notes live
//! is the engine's [`Memory`], bound to the run.

use std::time::Duration;

use rein_core::BoxFuture;
use serde_json::{Value, json};

use crate::{Tool, ToolContext, ToolError, ToolManifest};

/// The longest note kept, in bytes.
pub(crate) const MAX_NOTE_BYTES: usize = 4096;

/// Which memory a note is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryScope {
    /// This run (and its sub-agents).
    Session,
    /// Every run of the agent.
    Agent,
    /// Every run of the agent for this user.
    User,
}

impl MemoryScope {
    fn parse(args: &Value) -> Result<MemoryScope, ToolError> {
        match args.get("scope").and_then(Value::as_str) {
            Some("session") => Ok(MemoryScope::Session),
            Some("agent") => Ok(MemoryScope::Agent),
            Some("user") => Ok(MemoryScope::User),
            other => Err(ToolError::Refused(format!(
                "scope must be `session`, `agent` or `user`, not {other:?}"
            ))),
        }
    }
}

/// Notes, bound to one run's session, agent and user.
pub trait Memory: Send + Sync {
    /// The note under `key`, if any.
    fn read(&self, scope: MemoryScope, key: &str) -> Result<Option<String>, String>;
    /// Every key and note in a scope (at most `limit`), newest first.
    fn list(&self, scope: MemoryScope, limit: usize) -> Result<Vec<(String, String)>, String>;
    /// Keeps `note` under `key`, replacing what was there.
    fn write(&self, scope: MemoryScope, key: &str, note: &str) -> Result<(), String>;
}

fn manifest(name: &str, description: &str, properties: Value, required: &[&str]) -> ToolManifest {
    ToolManifest {
        name: name.into(),
        description: description.into(),
        parameters: json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false
        }),
        idempotent: true,
        timeout: Duration::from_secs(10),
    }
}

fn scope_schema() -> Value {
    json!({"type": "string", "enum": ["session", "agent", "user"], "description": "session: this run; agent: every run of this agent; user: every run for this user"})
}

fn memory(ctx: &ToolContext) -> Result<&dyn Memory, ToolError> {
    ctx.memory
        .as_deref()
        .ok_or_else(|| ToolError::Failed("memory is not available to this run".into()))
}

/// `memory.read`.
#[derive(Debug)]
pub struct MemoryRead {
    manifest: ToolManifest,
}

impl Default for MemoryRead {
    fn default() -> Self {
        MemoryRead {
            manifest: manifest(
                "memory.read",
                "Read a note you kept earlier, by key; without a key, list the notes in the scope.",
                json!({"scope": scope_schema(), "key": {"type": "string", "maxLength": 128}}),
                &["scope"],
            ),
        }
    }
}

impl Tool for MemoryRead {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }
    fn call<'a>(
        &'a self,
        ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let scope = MemoryScope::parse(&args)?;
            let memory = memory(ctx)?;
            match args.get("key").and_then(Value::as_str) {
                Some(key) => {
                    let note = memory.read(scope, key).map_err(ToolError::Failed)?;
                    Ok(json!({"key": key, "note": note}))
                }
                None => {
                    let notes = memory.list(scope, 50).map_err(ToolError::Failed)?;
                    Ok(json!({"notes": notes
                        .into_iter()
                        .map(|(key, note)| json!({"key": key, "note": note}))
                        .collect::<Vec<_>>()}))
                }
            }
        })
    }
}

/// `memory.write`.
#[derive(Debug)]
pub struct MemoryWrite {
    manifest: ToolManifest,
}

impl Default for MemoryWrite {
    fn default() -> Self {
        MemoryWrite {
            manifest: manifest(
                "memory.write",
                "Keep a short note under a key, replacing what was there.",
                json!({
                    "scope": scope_schema(),
                    "key": {"type": "string", "minLength": 1, "maxLength": 128},
                    "note": {"type": "string", "maxLength": MAX_NOTE_BYTES}
                }),
                &["scope", "key", "note"],
            ),
        }
    }
}

impl Tool for MemoryWrite {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }
    fn call<'a>(
        &'a self,
        ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let scope = MemoryScope::parse(&args)?;
            let key = args.get("key").and_then(Value::as_str).unwrap_or_default();
            let note = args.get("note").and_then(Value::as_str).unwrap_or_default();
            if note.len() > MAX_NOTE_BYTES {
                return Err(ToolError::Refused(format!(
                    "a note may hold at most {MAX_NOTE_BYTES} bytes"
                )));
            }
            memory(ctx)?
                .write(scope, key, note)
                .map_err(ToolError::Failed)?;
            Ok(json!({"kept": key}))
        })
    }
}
