//! Helpers shared by the binary's integration tests: the built binary, the example agent, and
//! running rein against a state directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The rein binary under test.
pub(crate) const REIN: &str = env!("CARGO_BIN_EXE_rein");

/// The support-desk example.
pub(crate) fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-desk")
}

/// Runs rein with this state directory, without any fault injection from the environment.
pub(crate) fn rein(state: &Path, args: &[&str]) -> Output {
    Command::new(REIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("REIN_FAULT_AFTER_EVENT")
        .env_remove("REIN_FAULT_AFTER_EFFECT")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {REIN}: {e}"))
}

/// The one JSON object rein printed, or a panic showing what it printed instead.
pub(crate) fn json_out(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// What rein printed on stdout.
pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
