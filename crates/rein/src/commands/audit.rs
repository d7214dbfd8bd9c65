//! `rein audit ...`: the key, verification, proofs, and reading the trail.

use std::path::Path;

use anyhow::{Context, bail};
use rein_api::{Rein, v1};

use crate::out::{self, outln};
use crate::render;

/// Exit code when a log or a proof does not verify.
pub(crate) const VERIFY_FAILED: u8 = 3;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read_key(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// The public key to trust, read from `--public-key`, or none (this machine's own, with a note).
fn trusted(public_key: Option<&Path>) -> anyhow::Result<Option<String>> {
    match public_key {
        Some(file) => Ok(Some(read_key(file)?)),
        None => {
            eprintln!(
                "note: trusting this machine's own audit key; pass --public-key for a check that does not"
            );
            Ok(None)
        }
    }
}

pub(crate) fn key(rein: &Rein) -> anyhow::Result<u8> {
    let key = rein.audit_key()?;
    outln!("{}", key.public_key);
    eprintln!("key id {} (signing key in {})", key.key_id, key.key_file);
    Ok(0)
}

pub(crate) fn rotate_key(rein: &Rein) -> anyhow::Result<u8> {
    let (old, new) = rein.rotate_audit_key(now_ms())?;
    outln!("{}", new.public_key);
    eprintln!(
        "rotated key {old} -> {}; the rotation is recorded and signed with {old}",
        new.key_id
    );
    Ok(0)
}

pub(crate) fn verify(
    rein: &Rein,
    public_key: Option<&Path>,
    checkpoint: Option<&Path>,
    json: bool,
) -> anyhow::Result<u8> {
    let key = trusted(public_key)?;
    let report = rein.audit_verify(key.as_deref(), checkpoint)?;
    let code = if report.ok { 0 } else { VERIFY_FAILED };
    if json {
        out::json(&report)?;
        return Ok(code);
    }
    if report.trail.filled > 0 {
        eprintln!(
            "filled in {} audit records a crash had left out",
            report.trail.filled
        );
    }
    if let Some(failure) = &report.failure {
        eprintln!("audit log FAILED verification: {failure}");
    }
    if !report.trail.problems.is_empty() {
        eprintln!(
            "audit trail does not match the event log ({} problems):",
            report.trail.problems.len()
        );
        for p in report.trail.problems.iter().take(20) {
            eprintln!("  {p}");
        }
    }
    if report.ok {
        outln!(
            "ok: {} records, {} checkpoints signed by {}; {} records not yet covered by a checkpoint; every event of {} runs has its record{}",
            report.records,
            report.checkpoints,
            if report.keys.is_empty() {
                "no key".to_owned()
            } else {
                report.keys.join(", ")
            },
            report.uncovered,
            report.trail.runs,
            if report.held_checkpoints > 0 {
                format!(
                    "; {} checkpoints held outside match",
                    report.held_checkpoints
                )
            } else {
                String::new()
            }
        );
        if !report.trail.in_progress.is_empty() {
            outln!(
                "note: {} runs are in progress; their newest events may not be recorded yet",
                report.trail.in_progress.len()
            );
        }
    }
    Ok(code)
}

pub(crate) fn proof(rein: &Rein, seq: u64, public_key: Option<&Path>) -> anyhow::Result<u8> {
    let key = trusted(public_key)?;
    let proof = rein.audit_proof(seq, key.as_deref())?;
    out::text(&format!("{}\n", serde_json::to_string_pretty(&proof)?));
    Ok(0)
}

pub(crate) fn verify_proof(file: &Path, public_key: &Path) -> anyhow::Result<u8> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let proof: v1::InclusionProof = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a rein inclusion proof", file.display()))?;
    let (seq, size, key_id) = (
        proof.seq,
        proof.checkpoint.tree_size,
        proof.checkpoint.key_id.clone(),
    );
    match Rein::verify_proof(proof, &read_key(public_key)?) {
        Ok(()) => {
            outln!("ok: record {seq} is in the log of {size} records signed by key {key_id}");
            Ok(0)
        }
        Err(rein_api::Error::Verification(e)) => {
            eprintln!("proof FAILED: {e}");
            Ok(VERIFY_FAILED)
        }
        Err(e) => Err(e.into()),
    }
}

/// Parses `--since`: milliseconds since the epoch, or a date `YYYY-MM-DD` (UTC).
fn parse_since(text: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let parts: Vec<u64> = text
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("--since {text}: give milliseconds or YYYY-MM-DD"))?;
    let [y, m, d] = parts[..] else {
        bail!("--since {text}: give milliseconds or YYYY-MM-DD")
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400_000)
}

pub(crate) fn export(rein: &Rein, run: Option<&str>, since: Option<&str>) -> anyhow::Result<u8> {
    let since = since.map(parse_since).transpose()?;
    for record in rein.audit_records(run, since)? {
        out::json(&record)?;
    }
    Ok(0)
}

pub(crate) fn show(rein: &Rein, run: &str) -> anyhow::Result<u8> {
    let records = rein.audit_records(Some(run), None)?;
    if records.is_empty() {
        bail!("no audit records for run `{run}`");
    }
    let start = records[0].at_ms;
    for r in &records {
        let d = &r.data;
        let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let list = |k: &str| {
            d.get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let what = match r.kind.as_str() {
            "run_started" => format!(
                "run started: agent {} (config {}), model {}, for {} in {}",
                s("agent"),
                &s("agent_digest")[..12.min(s("agent_digest").len())],
                s("model"),
                s("user"),
                s("tenant")
            ),
            "decision" => {
                let target = if s("action") == "use_model" {
                    format!("model {}", s("model"))
                } else {
                    format!(
                        "tool {} {}",
                        s("tool"),
                        render::one_line(&d["args"].to_string(), 80)
                    )
                };
                let by = list("policies");
                let reasons = list("reasons");
                let reasons = if reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {reasons}")
                };
                format!(
                    "{} {target}{reasons} ({})",
                    s("verdict"),
                    if by.is_empty() {
                        "default deny".into()
                    } else {
                        by
                    }
                )
            }
            "approval_requested" => format!(
                "approval {} requested for {}: {}",
                s("approval_id"),
                s("tool"),
                list("reasons")
            ),
            "approval_decided" => format!(
                "approval {} {} by {}{}",
                s("approval_id"),
                if d["expired"] == true {
                    "expired"
                } else if d["approved"] == true {
                    "approved"
                } else {
                    "denied"
                },
                s("by"),
                d.get("note")
                    .and_then(|n| n.as_str())
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ),
            "model_call" => format!(
                "model call {}: {} in / {} out tokens, {}",
                s("model"),
                d["input_tokens"],
                d["output_tokens"],
                render::fmt_us(d["latency_us"].as_u64().unwrap_or(0))
            ),
            "tool_intent" => format!(
                "tool {} starts ({}, try {})",
                s("tool"),
                s("call_id"),
                d["attempt"]
            ),
            "tool_outcome" => format!(
                "tool {} {} in {} (output sha256 {}…)",
                s("tool"),
                if d["ok"] == true {
                    "succeeded"
                } else {
                    "failed"
                },
                render::fmt_us(d["duration_us"].as_u64().unwrap_or(0)),
                &s("output_sha256")[..12.min(s("output_sha256").len())]
            ),
            "run_ended" => format!(
                "run ended {}{}",
                s("status"),
                d.get("reason")
                    .and_then(|x| x.as_str())
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            ),
            other => format!("{other} {}", render::one_line(&d.to_string(), 120)),
        };
        outln!(
            "#{:<6} {:>9}  {what}",
            r.seq,
            format!("+{}", render::fmt_ms(r.at_ms.saturating_sub(start)))
        );
    }
    Ok(0)
}
