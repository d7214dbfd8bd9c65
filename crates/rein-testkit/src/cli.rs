//! Driving the `rein` binary as a user would: a state directory, arguments, no fault injection
//! inherited from the environment, and its JSON output read back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The support-desk example agent.
pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-desk")
}

/// Runs `bin` with this state directory, without any fault injection from the environment.
pub fn rein(bin: &str, state: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("REIN_FAULT_AFTER_EVENT")
        .env_remove("REIN_FAULT_AFTER_EFFECT")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

/// The one JSON value rein printed, or a panic showing what it printed instead.
pub fn json_out(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON value ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// What rein printed on stdout.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What rein printed on stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
