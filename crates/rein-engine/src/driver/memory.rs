//! The memory tools' view of the notes, bound to one run's scopes: its session (shared with its
//! sub-agents through the root run's id), its agent's, and its user's with this agent.

use std::sync::Arc;

use crate::EngineError;
use crate::driver::Driver;

/// The notes one run may read and write.
struct RunMemory {
    notes: Arc<rein_store::NoteStore>,
    session: String,
    agent: String,
    user: String,
    run_id: String,
    clock: Arc<dyn rein_core::Clock>,
}

impl RunMemory {
    fn scope(&self, scope: rein_tools::MemoryScope) -> &str {
        match scope {
            rein_tools::MemoryScope::Session => &self.session,
            rein_tools::MemoryScope::Agent => &self.agent,
            rein_tools::MemoryScope::User => &self.user,
        }
    }
}

impl rein_tools::Memory for RunMemory {
    fn read(&self, scope: rein_tools::MemoryScope, key: &str) -> Result<Option<String>, String> {
        self.notes
            .read(self.scope(scope), key)
            .map_err(|e| e.to_string())
    }
    fn list(
        &self,
        scope: rein_tools::MemoryScope,
        limit: usize,
    ) -> Result<Vec<(String, String)>, String> {
        self.notes
            .list(self.scope(scope), limit)
            .map_err(|e| e.to_string())
    }
    fn write(&self, scope: rein_tools::MemoryScope, key: &str, note: &str) -> Result<(), String> {
        self.notes
            .write(
                self.scope(scope),
                key,
                note,
                &self.run_id,
                self.clock.now_ms(),
            )
            .map_err(|e| e.to_string())
    }
}

impl Driver<'_> {
    /// The run's memory: its session, its agent's, and its user's with this agent.
    pub(super) fn memory(&self) -> Result<Arc<dyn rein_tools::Memory>, EngineError> {
        let started = self.state.started();
        let agent = started.map(|s| s.agent.clone()).unwrap_or_default();
        let user = started.map(|s| s.user.clone()).unwrap_or_default();
        Ok(Arc::new(RunMemory {
            notes: self.engine.notes()?,
            session: format!("session:{}", self.root_run()),
            agent: format!("agent:{agent}"),
            user: format!("user:{agent}/{user}"),
            run_id: self.run_id.clone(),
            clock: self.engine.clock.clone(),
        }))
    }
}
