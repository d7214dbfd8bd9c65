//! The engine API: one library layer that every face of rein (the CLI today, the HTTP server and
//! the gateway next) drives, so that none of them holds logic of its own.
//!
//! [`Rein`] owns a state directory's layout (the event store, the budget ledger, the memory
//! notes, the audit trail and its keys, per-run workspaces, MCP pins, the secrets file) and every
//! operation on it: start, resume, list, show, reconcile and cancel runs; list, show and decide
//! approvals; check and explain policies; list an agent's tools; usage; the audit trail's key,
//! verification, proofs and records. It answers in [`wire::v1`] types, which are apart from the
//! core's and versioned. The audit trail is part of every engine it builds: nothing a face does
//! can run unaudited.

mod agents;
mod approvals;
pub mod attacks;
mod audit;
pub mod bench;
mod conversations;
mod convert;
pub mod gateway;
pub mod redteam;
mod runs;
mod tokens;
pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rein_engine::{Engine, EngineError};
use rein_store::{SqliteStore, StoreError};

/// Which gateway conversations an operator means: each field that is set must match.
pub use conversations::FORGOTTEN as CONVERSATION_FORGOTTEN;
pub use rein_store::ConversationFilter as ConversationQuery;
pub use runs::{LoadedAgent, NewRun, RunQuery, StartRun, Watch};
pub use tokens::{Caller, SCOPES};
pub use wire::v1;

/// The file name of an agent's configuration inside its folder.
pub use rein_config::AGENT_FILE;

/// The digest of an agent folder's configuration (agent.toml and every file it refers to), to
/// notice a change.
pub fn agent_digest(agent_dir: &std::path::Path) -> Result<String, Error> {
    Ok(rein_config::load(agent_dir)?.digest)
}

/// Budget periods as the ledger keys them (`2026-11-23`, `2026-11`, `run`).
pub mod budget {
    pub use rein_core::budget::{Period, period_key};
}

/// Text helpers shared by the faces.
pub mod text {
    pub use rein_core::text::one_line;
}

/// What went wrong, sorted by what a caller can do about it (the HTTP face maps these to status
/// codes). Every message names the file, field, run or approval it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such run, approval or record.
    #[error("{0}")]
    NotFound(String),
    /// The request, an agent's files or its policies are wrong: the message says where.
    #[error("{0}")]
    Invalid(String),
    /// The run is in another state or held by another process: try again later or otherwise.
    #[error("{0}")]
    Conflict(String),
    /// The audit log or a proof does not verify.
    #[error("{0}")]
    Verification(String),
    /// rein itself could not go on (a database, a file, a thread).
    #[error("{0}")]
    Internal(String),
    /// The caller gave no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's token may not do this.
    #[error("{0}")]
    Forbidden(String),
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Error {
        let message = e.to_string();
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::Config(_) | EngineError::Policy(_) | EngineError::Agent(_) => {
                Error::Invalid(message)
            }
            EngineError::AlreadyEnded { .. }
            | EngineError::Stopped { .. }
            | EngineError::Approval(_)
            | EngineError::Reconcile(_)
            | EngineError::Cancel(_) => Error::Conflict(message),
            EngineError::State { .. }
            | EngineError::Interrupted { .. }
            | EngineError::Audit(_)
            | EngineError::Redaction(_)
            | EngineError::Workspace { .. } => Error::Internal(message),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) | StoreError::ApprovalNotFound(_) => Error::NotFound(message),
            StoreError::Ambiguous { .. } => Error::Invalid(message),
            StoreError::Leased { .. } | StoreError::Conflict { .. } => Error::Conflict(message),
            _ => Error::Internal(message),
        }
    }
}

impl From<rein_config::ConfigError> for Error {
    fn from(e: rein_config::ConfigError) -> Error {
        Error::Invalid(e.to_string())
    }
}

impl From<rein_audit::AuditError> for Error {
    fn from(e: rein_audit::AuditError) -> Error {
        match e {
            rein_audit::AuditError::Verify(m) => Error::Verification(m),
            rein_audit::AuditError::Key(m) => Error::Invalid(format!("audit key: {m}")),
            other => Error::Internal(format!("audit log: {other}")),
        }
    }
}

/// Fault injection for crash tests: stop after the event with this number, or after the Nth
/// tool effect. Honoured only by builds with the `faults` feature (tests); a release build
/// refuses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Stop once this event is durable.
    pub after_event: Option<u64>,
    /// Stop after this many tool executions, before the last one's outcome is recorded.
    pub after_effect: Option<u32>,
}

/// Looks up an environment variable (API keys, `REIN_SECRET_*`); the face decides where from, so
/// nothing below it reads the process environment.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How a [`Rein`] is set up.
#[derive(Clone)]
pub struct Options {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The secrets file, when one is named explicitly (it must then exist); else
    /// `secrets.toml` in the state directory, if there is one.
    pub secrets_file: Option<PathBuf>,
    /// Also write each signed audit checkpoint to this directory.
    pub checkpoint_dir: Option<PathBuf>,
    /// The audit signing key's file, when it lives outside the state directory.
    pub audit_key_file: Option<PathBuf>,
    /// Environment lookups.
    pub env: EnvLookup,
    /// Fault injection (tests only).
    pub faults: Faults,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("state_dir", &self.state_dir)
            .field("secrets_file", &self.secrets_file)
            .field("checkpoint_dir", &self.checkpoint_dir)
            .field("audit_key_file", &self.audit_key_file)
            .field("faults", &self.faults)
            .finish()
    }
}

impl Options {
    /// Options for a state directory, with no environment and nothing else set.
    pub fn new(state_dir: impl Into<PathBuf>) -> Options {
        Options {
            state_dir: state_dir.into(),
            secrets_file: None,
            checkpoint_dir: None,
            audit_key_file: None,
            env: Arc::new(|_| None),
            faults: Faults::default(),
        }
    }
}

/// The files of a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// The directory.
    pub root: PathBuf,
}

impl StateDir {
    /// The audit trail's directory.
    pub fn audit(&self) -> PathBuf {
        self.root.join("audit")
    }
    /// The secrets file used when none is named.
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets.toml")
    }
    /// Where an agent's MCP tool definitions are pinned.
    pub fn mcp_pins(&self, agent: &str) -> PathBuf {
        rein_mcp::pins_path(&self.root, agent)
    }
}

/// The engine API over one state directory. Cheap to create; the store, the engine and the audit
/// log are opened on first use.
pub struct Rein {
    options: Options,
    dir: StateDir,
    store: OnceLock<Arc<SqliteStore>>,
    engine: OnceLock<Arc<Engine>>,
    tokens: OnceLock<rein_store::TokenStore>,
    conversations: OnceLock<rein_store::ConversationStore>,
    held: gateway::Held,
}

impl std::fmt::Debug for Rein {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rein")
            .field("options", &self.options)
            .finish()
    }
}

impl Rein {
    /// The API over `options.state_dir`. Refuses fault injection in a build without it.
    pub fn new(options: Options) -> Result<Rein, Error> {
        if options.faults != Faults::default() && !cfg!(feature = "faults") {
            return Err(Error::Invalid(
                "fault injection (REIN_FAULT_AFTER_*) is only in test builds of rein; unset it"
                    .into(),
            ));
        }
        Ok(Rein {
            dir: StateDir {
                root: options.state_dir.clone(),
            },
            options,
            store: OnceLock::new(),
            engine: OnceLock::new(),
            tokens: OnceLock::new(),
            conversations: OnceLock::new(),
            held: Default::default(),
        })
    }

    /// The state directory's files.
    pub fn state_dir(&self) -> &StateDir {
        &self.dir
    }

    /// The secrets file to read, and whether it must exist.
    fn secrets_file(&self) -> (PathBuf, bool) {
        match &self.options.secrets_file {
            Some(f) => (f.clone(), true),
            None => (self.dir.secrets(), false),
        }
    }

    fn store(&self) -> Result<Arc<SqliteStore>, Error> {
        if let Some(store) = self.store.get() {
            return Ok(store.clone());
        }
        let opened = Arc::new(SqliteStore::open(
            &self.dir.root,
            rein_core::Durability::Normal,
        )?);
        Ok(self.store.get_or_init(|| opened).clone())
    }

    fn audit_options(&self) -> rein_audit::AuditOptions {
        rein_audit::AuditOptions {
            checkpoint_dir: self.options.checkpoint_dir.clone(),
            key_file: self.options.audit_key_file.clone(),
            ..rein_audit::AuditOptions::default()
        }
    }

    fn open_audit(&self) -> Result<rein_audit::AuditLog, Error> {
        Ok(rein_audit::AuditLog::open(
            &self.dir.audit(),
            self.audit_options(),
        )?)
    }

    /// The engine, with the audit trail, opened once.
    fn engine(&self) -> Result<Arc<Engine>, Error> {
        if let Some(engine) = self.engine.get() {
            return Ok(engine.clone());
        }
        let store = self.store()?;
        let audit = Arc::new(self.open_audit()?);
        let engine = Engine::new(store, &self.dir.root, audit);
        let engine = self.with_faults(engine);
        Ok(self.engine.get_or_init(|| Arc::new(engine)).clone())
    }

    #[cfg(feature = "faults")]
    fn with_faults(&self, engine: Engine) -> Engine {
        let Faults {
            after_event,
            after_effect,
        } = self.options.faults;
        if after_event.is_none() && after_effect.is_none() {
            return engine;
        }
        engine.with_faults(rein_engine::FaultPlan {
            after_event,
            after_effect,
            stop: Some(Arc::new(|| {
                eprintln!("rein: fault injection point reached; waiting to be killed");
                loop {
                    std::thread::park();
                }
            })),
        })
    }

    #[cfg(not(feature = "faults"))]
    fn with_faults(&self, engine: Engine) -> Engine {
        engine
    }

    /// The JSON Schema of `agent.toml`.
    pub fn agent_schema() -> String {
        rein_config::agent_schema()
    }

    fn env(&self) -> &(dyn Fn(&str) -> Option<String> + Send + Sync) {
        self.options.env.as_ref()
    }
}
