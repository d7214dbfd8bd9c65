//! Watching a run as it goes, and (in builds with the `faults` feature, for crash tests only)
//! injecting faults.

use rein_core::StoredEvent;

/// Sees every event of a run as it is recorded (the CLI prints them).
pub trait Observer: Send + Sync {
    /// Called after each event is applied and queued for commit (a live view: it may be lost
    /// to a crash before it commits).
    fn on_event(&self, run_id: &str, event: &StoredEvent);

    /// Whether [`Observer::on_committed`] is wanted (it costs a copy of each event).
    fn wants_committed(&self) -> bool {
        false
    }

    /// Called for each event once it is known to be durable, in order: when the driver next
    /// waits for its commits (an intent, an outcome, an ending, a suspension, the first model
    /// call, a stop). What others are told from here can never be taken back by a crash. The
    /// event is handed over, as the driver keeps no other use for it.
    fn on_committed(&self, _run_id: &str, _event: StoredEvent) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn on_event(&self, _run_id: &str, _event: &StoredEvent) {}
}

/// Points at which the engine stops itself, for crash tests: it makes everything recorded so far
/// durable, then calls `stop`, which in `rein` parks the process until the test kills it with
/// SIGKILL. If `stop` returns, the run is abandoned with [`crate::EngineError::Interrupted`] and
/// nothing more is recorded, as if the process had died. Only in builds with the `faults`
/// feature (tests), never in a release build.
#[cfg(feature = "faults")]
#[derive(Clone, Default)]
pub struct FaultPlan {
    /// Stop once the event with this sequence number is durable.
    pub after_event: Option<u64>,
    /// Stop right after the Nth tool execution of this process returns, before its outcome is
    /// recorded (the window in which an effect happened but the log does not know it).
    pub after_effect: Option<u32>,
    /// What stopping means.
    pub stop: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

#[cfg(feature = "faults")]
impl std::fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultPlan")
            .field("after_event", &self.after_event)
            .field("after_effect", &self.after_effect)
            .finish()
    }
}
