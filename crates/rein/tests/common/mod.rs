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

/// The report of `rein bench <args> --json`, which must succeed.
pub(crate) fn bench_report(args: &[&str]) -> Value {
    let out = std::process::Command::new(REIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json_out(&out)
}

/// Panics naming the first of `keys` the report does not give as a positive number.
pub(crate) fn assert_positive(report: &Value, keys: &[&str]) {
    for key in keys {
        assert!(
            report[*key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
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
