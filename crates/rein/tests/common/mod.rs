//! Helpers shared by the binary's integration tests: the built binary, and the testkit's way of
//! running it and reading its JSON.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// The rein binary under test.
pub(crate) const REIN: &str = env!("CARGO_BIN_EXE_rein");

/// The support-desk example.
pub(crate) fn example() -> PathBuf {
    rein_testkit::cli::example()
}

/// Runs rein with this state directory, without any fault injection from the environment.
pub(crate) fn rein(state: &Path, args: &[&str]) -> Output {
    rein_testkit::cli::rein(REIN, state, args)
}

/// The one JSON value rein printed, or a panic showing what it printed instead.
pub(crate) fn json_out(output: &Output) -> Value {
    rein_testkit::cli::json_out(output)
}

/// What rein printed on stdout.
pub(crate) fn stdout(output: &Output) -> String {
    rein_testkit::cli::stdout(output)
}

/// What rein printed on stderr.
pub(crate) fn stderr(output: &Output) -> String {
    rein_testkit::cli::stderr(output)
}

/// Where the Python packages the tests use are (`.ci/run` installs them there).
pub(crate) fn python_path() -> String {
    std::env::var("REIN_TEST_PYTHONPATH").unwrap_or_else(|_| {
        format!(
            "{}/.cache/rein/py",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}
