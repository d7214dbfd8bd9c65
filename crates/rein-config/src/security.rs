//! What the operator declares to hold a compromised model: policy data, how the answer is
//! treated as a sink, and what a command tool's sandbox lets its program reach.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A policy data file (`[data] payees = "data/payees.json"`): its strings and numbers become the
/// set `context.data.<name>`, and its values count as the operator's for provenance. The engine
/// reads it again when it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// The set's name.
    pub name: String,
    /// The file (absolute).
    pub path: PathBuf,
}

/// Which links and images are removed from the run's answer before it is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StripLinks {
    /// None (the policies still judge them).
    None,
    /// Those whose URL carries data the run read (default).
    #[default]
    CarryingData,
    /// Those, and those whose host is not in the allowlist.
    OutsideAllowlist,
    /// All of them.
    All,
}

/// The `[answer]` section, resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnswerSpec {
    /// Which links are stripped.
    pub strip_links: StripLinks,
    /// Hosts links may point to (`host` or `*.domain`), for [`StripLinks::OutsideAllowlist`].
    pub allow_hosts: Vec<String>,
}

/// What a command tool's program may reach.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SandboxSpec {
    /// Hosts it may connect to through rein's proxy (`host`, `host:port`, `*.domain`); none
    /// means no network.
    pub allow_hosts: Vec<String>,
    /// Paths it may read besides the workspace, its program's files and the system's.
    pub read_paths: Vec<PathBuf>,
    /// Paths it may write besides the workspace.
    pub write_paths: Vec<PathBuf>,
}

/// What happens when the kernel cannot sandbox command tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxFallback {
    /// The run does not start.
    #[default]
    Refuse,
    /// Command tools run unsandboxed, and the run says so.
    Continue,
}

/// Reads a policy data file: JSON, any shape. The error names the file and says what is wrong.
pub fn read_data(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read policy data {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "policy data {} is not JSON (line {}, column {}): {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}
