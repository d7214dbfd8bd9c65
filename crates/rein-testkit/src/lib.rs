//! Shared test support for rein's crates, so that fixtures live once: agent folders written from
//! a few lines of TOML, engines on scratch state directories (with their audit trail), fault
//! plans for crash tests, a clock tests move by hand, fake model servers (adversarial ones
//! included: duplicate call ids, usage above what was reserved, servers that never answer), and
//! helpers for driving the `rein` binary.
//!
//! Test code: it panics on every failure, with a message saying what failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod fake;
pub mod model;
pub mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rein_core::{Durability, StoredEvent};
use rein_engine::{Agent, Engine, FaultPlan};
use rein_store::SqliteStore;

/// `[model]` for the scripted provider reading `script.toml`.
pub const SCRIPTED_MODEL: &str =
    "[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\n";

/// A policy that permits everything.
pub const PERMIT_ALL: &str = "permit(principal, action, resource);\n";

/// An agent folder in a temporary directory: `agent.toml` as given, a `workspace/`, and
/// `policies/all.cedar` permitting everything until replaced.
#[derive(Debug)]
pub struct AgentFolder {
    dir: tempfile::TempDir,
}

impl AgentFolder {
    /// A folder whose `agent.toml` is `agent_toml`.
    pub fn new(agent_toml: &str) -> AgentFolder {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workspace")).unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/all.cedar"), PERMIT_ALL).unwrap();
        std::fs::write(dir.path().join("agent.toml"), agent_toml).unwrap();
        AgentFolder { dir }
    }

    /// Writes a file (relative to the folder), creating its parent folders.
    pub fn file(self, relative: &str, text: &str) -> AgentFolder {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, text).unwrap();
        self
    }

    /// Replaces the policies with `text`.
    pub fn policy(self, text: &str) -> AgentFolder {
        self.file("policies/all.cedar", text)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Its workspace.
    pub fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    /// Lines in a file of the workspace (a tool's record of its effects), 0 if it is missing.
    pub fn effects(&self, file: &str) -> usize {
        std::fs::read_to_string(self.workspace().join(file))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Its configuration, resolved.
    pub fn spec(&self) -> rein_config::AgentSpec {
        rein_config::load(self.dir.path()).unwrap()
    }

    /// The agent, built with no environment.
    pub fn agent(&self) -> Agent {
        self.agent_with_env(&|_| None)
    }

    /// The agent, built with this environment.
    pub fn agent_with_env(&self, env: &dyn Fn(&str) -> Option<String>) -> Agent {
        Agent::from_spec(&self.spec(), env).unwrap()
    }
}

/// Copies a folder and everything in it (an agent folder into a folder of agents, an example
/// into a scratch directory).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// An engine on `state` (created if needed), recording into its audit trail.
pub fn engine(state: &Path) -> Engine {
    let store = Arc::new(SqliteStore::open(state, Durability::Normal).unwrap());
    let audit = rein_audit::AuditLog::open(&state.join("audit"), Default::default()).unwrap();
    Engine::new(store, state, Arc::new(audit))
}

/// An engine on `state` that stops at `faults`.
pub fn engine_with_faults(state: &Path, faults: FaultPlan) -> Engine {
    engine(state).with_faults(faults)
}

/// Stop (abandoning the run as a dead process would) once event `seq` is durable.
pub fn stop_after_event(seq: u64) -> FaultPlan {
    FaultPlan {
        after_event: Some(seq),
        after_effect: None,
        stop: Some(Arc::new(|| {})),
    }
}

/// Stop right after the `n`th tool execution, before its outcome is recorded.
pub fn stop_after_effect(n: u32) -> FaultPlan {
    FaultPlan {
        after_event: None,
        after_effect: Some(n),
        stop: Some(Arc::new(|| {})),
    }
}

/// The kinds of a run's events, in order.
pub fn kinds(events: &[StoredEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.kind()).collect()
}

/// A clock that moves only when told.
#[derive(Debug, Default)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    /// A clock at `ms`.
    pub fn at(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(ms)))
    }

    /// Moves it on.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl rein_core::Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Verifies the audit trail of `state` against its own key and against the event log: every
/// event has its one record. Panics with what is wrong.
pub fn assert_trail_complete(state: &Path) {
    let rein = rein_api::Rein::new(rein_api::Options::new(state)).unwrap();
    let report = rein.audit_verify(None, None).unwrap();
    assert!(
        report.ok && report.trail.problems.is_empty() && report.failure.is_none(),
        "the audit trail does not hold: {report:?}"
    );
}
