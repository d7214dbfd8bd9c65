//! The audit trail through the binary: the example's run leaves a trail that verifies and reads
//! well; tampering is caught; a proof checks offline with nothing but itself and the public key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_positive, bench_report, example, rein, stdout};

#[test]
fn the_example_leaves_a_trail_that_verifies_and_tampering_is_caught() {
    let state = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let run = rein(
        state.path(),
        &[
            "run",
            example().to_str().unwrap(),
            "--json",
            "--checkpoint-dir",
            outside.path().to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let run_id = report["run_id"].as_str().unwrap();

    let key_file = state.path().join("trusted.pub");
    std::fs::write(&key_file, rein(state.path(), &["audit", "key"]).stdout).unwrap();
    let verify = rein(
        state.path(),
        &[
            "audit",
            "verify",
            "--public-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        stdout(&verify).contains("0 records not yet covered"),
        "{}",
        stdout(&verify)
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "the checkpoint also left the state directory"
    );

    let show = stdout(&rein(
        state.path(),
        &["audit", "show", "--run", &run_id[..10]],
    ));
    for needle in [
        "run started: agent support-desk",
        "allow tool refunds.issue {\"amount\":42.5",
        "(support-tools)",
        "model call support-script",
        "tool email.send succeeded",
        "run ended completed",
    ] {
        assert!(
            show.contains(needle),
            "audit show lacks {needle:?}:\n{show}"
        );
    }
    let export = stdout(&rein(state.path(), &["audit", "export", "--run", run_id]));
    let records: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() > 10 && records.iter().all(|r| r["run_id"] == run_id));
    assert!(
        stdout(&rein(
            state.path(),
            &["audit", "export", "--since", "2999-01-01"]
        ))
        .is_empty()
    );
    // The email body is sensitive: the trail holds a keyed hash, never the text.
    let email = records
        .iter()
        .find(|r| r["kind"] == "decision" && r["data"]["tool"] == "email.send")
        .unwrap();
    assert!(
        email["data"]["args"]["body"]["keyed_hash"]
            .as_str()
            .unwrap()
            .starts_with("blake3:")
    );
    assert_eq!(email["data"]["args"]["to"], "jane@example.com");
    let trail = std::fs::read_to_string(state.path().join("audit/records.jsonl")).unwrap();
    assert!(!trail.contains("We are sorry your order arrived damaged"));

    // A proof of the refund decision checks offline, and fails once the record is altered.
    let seq = records
        .iter()
        .find(|r| r["kind"] == "decision" && r["data"]["tool"] == "refunds.issue")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let proof_file = state.path().join("proof.json");
    std::fs::write(
        &proof_file,
        rein(
            state.path(),
            &[
                "audit",
                "proof",
                &seq.to_string(),
                "--public-key",
                key_file.to_str().unwrap(),
            ],
        )
        .stdout,
    )
    .unwrap();
    let ok = rein(
        state.path(),
        &[
            "audit",
            "verify-proof",
            proof_file.to_str().unwrap(),
            "--public-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let forged = std::fs::read_to_string(&proof_file).unwrap().replace(
        "\\\"verdict\\\":\\\"allow\\\"",
        "\\\"verdict\\\":\\\"deny\\\"",
    );
    assert!(forged.contains("deny"));
    std::fs::write(&proof_file, forged).unwrap();
    let bad = rein(
        state.path(),
        &[
            "audit",
            "verify-proof",
            proof_file.to_str().unwrap(),
            "--public-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(bad.status.code(), Some(3));

    // A key rotation: the old key still verifies the whole log, which now names the new key.
    assert_eq!(
        rein(state.path(), &["audit", "rotate-key"]).status.code(),
        Some(0)
    );
    let after = rein(
        state.path(),
        &["run", example().to_str().unwrap(), "--json"],
    );
    assert_eq!(after.status.code(), Some(0));
    let verify = rein(
        state.path(),
        &[
            "audit",
            "verify",
            "--public-key",
            key_file.to_str().unwrap(),
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["keys"].as_array().unwrap().len(), 2, "{report}");

    // Changing the refund's recorded verdict in the log itself is caught by `audit verify`.
    let records_file = state.path().join("audit/records.jsonl");
    let text = std::fs::read_to_string(&records_file).unwrap();
    let line = text.lines().nth(seq as usize - 1).unwrap();
    std::fs::write(
        &records_file,
        text.replace(
            line,
            &line.replace("\"verdict\":\"allow\"", "\"verdict\":\"deny\""),
        ),
    )
    .unwrap();
    let tampered = rein(
        state.path(),
        &[
            "audit",
            "verify",
            "--public-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(tampered.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&tampered.stderr).contains("do not match checkpoint 1"),
        "{}",
        String::from_utf8_lossy(&tampered.stderr)
    );
}

#[test]
fn the_audit_benchmark_reports_its_figures() {
    let report = bench_report(&["audit", "--records", "3000"]);
    assert_positive(
        &report,
        &["append_per_s", "verify_per_s", "bytes_per_record"],
    );
}

#[test]
fn the_signing_key_can_live_outside_the_state_directory() {
    let state = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("rein-audit.key");
    let key_arg = key.to_str().unwrap();
    let run = rein(
        state.path(),
        &[
            "--audit-key-file",
            key_arg,
            "run",
            example().to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(run.status.code(), Some(0));
    assert!(key.exists());
    assert!(!state.path().join("audit/signing.key").exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let public = state.path().join("trusted.pub");
    std::fs::write(
        &public,
        rein(state.path(), &["--audit-key-file", key_arg, "audit", "key"]).stdout,
    )
    .unwrap();
    let verify = rein(
        state.path(),
        &["audit", "verify", "--public-key", public.to_str().unwrap()],
    );
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
