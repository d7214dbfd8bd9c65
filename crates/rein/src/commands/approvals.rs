//! `rein approvals ...`: the inbox, the card, and decisions.

use rein_api::{Rein, v1};
use serde_json::Value;

use crate::out::{self, outln};
use crate::render;

/// Who is deciding: `--as`, else the login name.
pub(crate) fn approver(as_name: Option<String>) -> String {
    as_name
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn expiry(a: &v1::ApprovalSummary) -> String {
    match a.expires_ms {
        None => "never expires".into(),
        Some(at) if at <= now_ms() => "expired".into(),
        Some(at) => format!("expires in {}", render::fmt_ms(at - now_ms())),
    }
}

pub(crate) fn list(rein: &Rein, all: bool, json: bool) -> anyhow::Result<u8> {
    let approvals = rein.list_approvals(all, None)?;
    if json {
        out::json(&approvals)?;
        return Ok(0);
    }
    if approvals.is_empty() {
        outln!(
            "{}",
            if all {
                "no approval requests"
            } else {
                "no pending approvals"
            }
        );
        return Ok(0);
    }
    outln!(
        "{:<32}  {:<9}  {:<20}  {:<32}  {:<18}  arguments",
        "approval",
        "status",
        "tool",
        "run",
        "when"
    );
    for a in approvals {
        let when = if a.status == "pending" {
            expiry(&a)
        } else {
            a.decided_by
                .clone()
                .map(|b| format!("by {b}"))
                .unwrap_or_default()
        };
        outln!(
            "{:<32}  {:<9}  {:<20}  {:<32}  {:<18}  {}",
            a.id,
            a.status,
            render::one_line(&a.tool, 20),
            a.run_id,
            when,
            render::one_line(&a.arguments.to_string(), 60)
        );
    }
    Ok(0)
}

/// The approval card: rendered by rein from the recorded request (the real arguments, JSON
/// encoded so no text can pose as part of the card), never from anything the model wrote.
pub(crate) fn show(rein: &Rein, id: &str, json: bool) -> anyhow::Result<u8> {
    let card = rein.approval_card(id)?;
    if json {
        out::json(&card)?;
        return Ok(0);
    }
    let a = &card.approval;
    let status = if a.status == "pending" {
        expiry(a)
    } else {
        format!(
            "{} by {}",
            a.status,
            a.decided_by.clone().unwrap_or_default()
        )
    };
    outln!("Approval {}  ({status})", a.id);
    if let (Some(agent), Some(user), Some(tenant)) = (&card.agent, &card.user, &card.tenant) {
        outln!(
            "  run        {} · agent {agent} · for user {user} in tenant {tenant}",
            a.run_id
        );
    }
    if let Some(task) = &card.task {
        outln!("  task       {}", serde_json::to_string(task)?);
    }
    outln!("  tool       {}", a.tool);
    outln!("  arguments");
    match &card.arguments {
        Value::Object(map) => {
            let width = map.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            for (k, v) in map {
                outln!(
                    "    {:<width$}  {}",
                    serde_json::to_string(k)?.trim_matches('"'),
                    serde_json::to_string(v)?
                );
            }
        }
        other => outln!("    {}", serde_json::to_string(other)?),
    }
    if !card.provenance_text.is_empty() {
        outln!("  from");
        for line in &card.provenance_text {
            outln!("    {line}");
        }
    }
    if let Some(diff) = &card.diff {
        outln!("  changes");
        for line in diff.lines() {
            outln!("    {line}");
        }
    }
    outln!("  why        {}", card.reasons.join("; "));
    outln!("  policies   {}", card.policies.join(", "));
    outln!(
        "  labels     {}",
        if card.labels.is_empty() {
            "none".into()
        } else {
            card.labels.join(", ")
        }
    );
    if a.status == "pending" {
        outln!(
            "  decide     rein approvals approve {} [--note TEXT]  |  rein approvals deny {} [--note TEXT]",
            a.id,
            a.id
        );
    }
    Ok(0)
}

pub(crate) async fn decide(
    rein: &Rein,
    id: &str,
    approved: bool,
    by: String,
    note: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    let decided = rein.decide(id, approved, &by, note).await?;
    if json {
        out::json(&decided)?;
    } else {
        // A gateway's held request goes on when its conversation sends its next request.
        let next = if rein.is_gateway_run(&decided.run_id)? {
            "the conversation's next request to the gateway receives what was decided".to_owned()
        } else {
            format!("continue the run with: rein runs resume {}", decided.run_id)
        };
        outln!("{} {} by {}; {next}", decided.id, decided.status, by);
    }
    Ok(0)
}
