//! `rein audit`: the signing key, verification, inclusion proofs, and reading the trail.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rein_audit::{AuditLog, AuditOptions, InclusionProof};

use crate::render;

/// Exit code when a log or a proof fails verification.
pub(crate) const VERIFY_FAILED: u8 = 3;

/// The audit directory of a state directory.
pub(crate) fn audit_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}

/// Opens the log the engine writes to.
pub(crate) fn open_log(
    state_dir: &Path,
    checkpoint_dir: Option<&Path>,
    fsync: bool,
) -> anyhow::Result<AuditLog> {
    let options = AuditOptions {
        checkpoint_dir: checkpoint_dir.map(Path::to_owned),
        fsync,
        ..AuditOptions::default()
    };
    AuditLog::open(&audit_dir(state_dir), options).context("opening the audit log")
}

fn trusted_keys(
    state_dir: &Path,
    public_key: Option<&Path>,
) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
    match public_key {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Ok(vec![rein_audit::parse_public(&text)?])
        }
        None => {
            eprintln!(
                "note: trusting this machine's own audit key; pass --public-key for a check that does not"
            );
            Ok(vec![open_log(state_dir, None, false)?.public_key()])
        }
    }
}

pub(crate) fn key(state_dir: &Path) -> anyhow::Result<u8> {
    let log = open_log(state_dir, None, false)?;
    let key = log.public_key();
    println!("{}", rein_audit::format_public(&key));
    eprintln!(
        "key id {} (signing key in {})",
        rein_audit::key_id(&key),
        log.paths().key.display()
    );
    Ok(0)
}

pub(crate) fn rotate_key(state_dir: &Path) -> anyhow::Result<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (old, new) = rein_audit::rotate_key(&audit_dir(state_dir), now)?;
    println!(
        "{}",
        rein_audit::format_public(&open_log(state_dir, None, false)?.public_key())
    );
    eprintln!("rotated key {old} -> {new}; the rotation is recorded and signed with {old}");
    Ok(0)
}

pub(crate) fn verify(
    state_dir: &Path,
    public_key: Option<&Path>,
    json: bool,
) -> anyhow::Result<u8> {
    let trusted = trusted_keys(state_dir, public_key)?;
    match rein_audit::verify(&audit_dir(state_dir), &trusted) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "ok: {} records, {} checkpoints signed by {}; {} records not yet covered by a checkpoint",
                    report.records,
                    report.checkpoints,
                    if report.keys.is_empty() {
                        "no key".to_owned()
                    } else {
                        report.keys.join(", ")
                    },
                    report.uncovered
                );
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("audit log FAILED verification: {e}");
            Ok(VERIFY_FAILED)
        }
    }
}

pub(crate) fn proof(state_dir: &Path, seq: u64, public_key: Option<&Path>) -> anyhow::Result<u8> {
    let trusted = trusted_keys(state_dir, public_key)?;
    let proof = rein_audit::prove(&audit_dir(state_dir), seq, &trusted)?;
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(0)
}

pub(crate) fn verify_proof(file: &Path, public_key: &Path) -> anyhow::Result<u8> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let proof: InclusionProof = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a rein inclusion proof", file.display()))?;
    let key = rein_audit::parse_public(
        &std::fs::read_to_string(public_key)
            .with_context(|| format!("reading {}", public_key.display()))?,
    )?;
    match rein_audit::verify_proof(&proof, &key) {
        Ok(()) => {
            println!(
                "ok: record {} is in the log of {} records signed by key {}",
                proof.seq, proof.checkpoint.tree_size, proof.checkpoint.key_id
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("proof FAILED: {e}");
            Ok(VERIFY_FAILED)
        }
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

fn selected(
    state_dir: &Path,
    run: Option<&str>,
    since: Option<&str>,
) -> anyhow::Result<Vec<rein_audit::Record>> {
    let since = since.map(parse_since).transpose()?;
    let records = rein_audit::read_records(&audit_dir(state_dir))?;
    Ok(records
        .into_iter()
        .filter(|r| run.is_none_or(|id| r.run_id.as_deref().is_some_and(|rid| rid.starts_with(id))))
        .filter(|r| since.is_none_or(|s| r.at_ms >= s))
        .collect())
}

pub(crate) fn export(
    state_dir: &Path,
    run: Option<&str>,
    since: Option<&str>,
) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    for record in selected(state_dir, run, since)? {
        let _ = writeln!(out, "{}", serde_json::to_string(&record)?);
    }
    Ok(0)
}

pub(crate) fn show(state_dir: &Path, run: &str) -> anyhow::Result<u8> {
    let records = selected(state_dir, Some(run), None)?;
    if records.is_empty() {
        bail!("no audit records for run `{run}`");
    }
    let start = records[0].at_ms;
    let mut out = std::io::stdout().lock();
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
                    "expired".to_owned()
                } else if d["approved"] == true {
                    "approved".to_owned()
                } else {
                    "denied".to_owned()
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
        let _ = writeln!(
            out,
            "#{:<6} {:>9}  {what}",
            r.seq,
            format!("+{}", render::fmt_ms(r.at_ms.saturating_sub(start)))
        );
    }
    Ok(0)
}

pub(crate) fn bench(records: u64, json: bool) -> anyhow::Result<u8> {
    let report = rein_engine::bench::bench_audit(records)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} records\n  append (durable, fsync per batch of {}): {:.0} records/s · verify: {:.0} records/s · {} bytes/record",
            report.records,
            report.batch,
            report.append_per_s,
            report.verify_per_s,
            report.bytes_per_record
        );
    }
    Ok(0)
}
