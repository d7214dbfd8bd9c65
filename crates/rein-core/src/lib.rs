//! The pure core of rein: ids, conversation types, events, the run state machine, limits and
//! end states.
//!
//! Nothing in this crate does I/O, reads a clock or spawns a task. The engine feeds it events and
//! asks it what to do next; everything here can be tested with plain values.

pub mod budget;
pub mod end;
pub mod event;
pub mod facts;
pub mod gate;
pub mod grants;
pub mod labels;
pub mod message;
pub mod provenance;
pub mod reply;
pub mod secrets;
pub mod settings;
pub mod state;
pub mod text;

pub use end::EndState;
pub use event::{ClientResult, EVENT_FORMAT_VERSION, Event, ParentRef, RunStarted, StoredEvent};
pub use gate::{Decision, Verdict};
pub use message::{Message, ToolCall, ToolSpec, Usage};
pub use settings::{ModelSettings, OutputFormat, ToolChoice};
pub use state::{Action, Limits, RunState, StateError};

/// A boxed, sendable future, so that async traits (providers, tools) can be trait objects.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How hard the store works to keep a committed event.
///
/// Both settings survive a killed process (`kill -9`): a commit reaches the operating system
/// before the engine moves on. Only `Fsync` also survives a power loss or kernel crash, by
/// flushing to the disk at each commit; concurrent runs share those flushes (group commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Committed events survive a crash of the process, not of the machine.
    #[default]
    Normal,
    /// Committed events are flushed to disk before the commit returns.
    Fsync,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Durability::Normal),
            "fsync" => Ok(Durability::Fsync),
            other => Err(format!(
                "unknown durability `{other}`: use `normal` or `fsync`"
            )),
        }
    }
}

/// A source of wall-clock time in milliseconds since the Unix epoch, injected so that logic never
/// reads the system clock itself.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}
