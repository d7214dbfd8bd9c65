//! What the audit trail records about a run: every event becomes one audit record naming the
//! event it comes from (run and sequence number). Tool outputs are recorded by hash, tasks by
//! hash and length, the arguments a tool marks sensitive by keyed hash, and secret values never
//! appear (the events passed the redactor before they get here).
//!
//! The mapping is a pure function of the run's log, so what a crash left out of the trail is
//! rebuilt from the log ([`missing`]) exactly as it would have been written.

use rein_audit::Entry;
use rein_core::{Event, RunState, StateError, StoredEvent};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The arguments of a call of the current step, as the state knows them.
fn args_of(state: &RunState, call_id: &str) -> Value {
    state
        .calls()
        .iter()
        .find(|c| c.call.id == call_id)
        .map(|c| c.call.arguments.clone())
        .unwrap_or(Value::Null)
}

fn tool_of(state: &RunState, call_id: &str) -> Option<String> {
    state
        .calls()
        .iter()
        .find(|c| c.call.id == call_id)
        .map(|c| c.call.name.clone())
}

/// A tool's arguments with the fields its run marks sensitive replaced by keyed hashes.
fn redact_args(
    state: &RunState,
    tool: &str,
    mut args: Value,
    keyed_hash: &dyn Fn(&[u8]) -> String,
) -> Value {
    let fields = state.started().and_then(|s| s.sensitive.get(tool));
    if let (Some(fields), Some(map)) = (fields, args.as_object_mut()) {
        for field in fields {
            if let Some(value) = map.get_mut(field) {
                *value = json!({ "keyed_hash": keyed_hash(value.to_string().as_bytes()) });
            }
        }
    }
    args
}

/// A record's facts, written to JSON straight from the values given, in the order given: no
/// tree of JSON values is built and dropped for each record (under `rein bench gateway`,
/// `entry_for` went from 3.2 % of the server's CPU to 2.0 %).
macro_rules! facts {
    ($($key:ident : $value:expr),* $(,)?) => {{
        // Each fact's type is a parameter named as the fact.
        #[allow(non_camel_case_types)]
        let data = {
            #[derive(serde::Serialize)]
            struct Facts<$($key),*> {
                $($key: $key),*
            }
            rein_audit::Data::of(&Facts { $($key: &$value),* })
        };
        data
    }};
}

/// The audit record of an event. `state` is the run's state after the event was applied.
pub(crate) fn entry_for(
    run_id: &str,
    stored: &StoredEvent,
    state: &RunState,
    keyed_hash: &dyn Fn(&[u8]) -> String,
) -> Entry {
    let (kind, data) = match &stored.event {
        Event::RunStarted(s) => (
            "run_started",
            facts! {
                agent: s.agent, agent_digest: s.agent_digest, provider: s.provider, model: s.model,
                tools: s.tools, user: s.user, tenant: s.tenant,
                task_sha256: sha256(s.task.as_bytes()), task_bytes: s.task.len(),
                grants_sha256: s.grants.as_ref().map(|g| sha256(serde_json::to_string(g).unwrap_or_default().as_bytes())),
                data: s.data,
                parent: s.parent.as_ref().map(|p| json!({"run_id": p.run_id, "call_id": p.call_id})),
            },
        ),
        Event::RunResumed {
            attempt,
            agent_changed,
        } => (
            "run_resumed",
            facts! {attempt: attempt, agent_changed: agent_changed},
        ),
        Event::ModelJudged {
            step,
            model,
            verdict,
            policies,
            reasons,
        } => (
            "decision",
            facts! {action: "use_model", model: model, step: step, verdict: verdict, policies: policies, reasons: reasons},
        ),
        Event::ToolJudged {
            step,
            call_id,
            tool,
            verdict,
            policies,
            reasons,
            labels,
            approved_by,
            provenance,
        } => (
            "decision",
            facts! {
                action: "call_tool", tool: tool, call_id: call_id, step: step, verdict: verdict,
                policies: policies, reasons: reasons, labels: labels, approved_by: approved_by,
                args: redact_args(state, tool, args_of(state, call_id), keyed_hash),
                provenance: provenance,
            },
        ),
        Event::AnswerJudged {
            step,
            verdict,
            policies,
            reasons,
            text,
            stripped,
            approved_by,
        } => (
            "decision",
            facts! {
                action: "respond", step: step, verdict: verdict, policies: policies,
                reasons: reasons, approved_by: approved_by,
                text_sha256: text.as_ref().map(|t| sha256(t.as_bytes())),
                stripped: stripped.iter().map(|u| json!({
                    "host": rein_core::facts::host_of(u), "url_sha256": sha256(u.as_bytes()),
                })).collect::<Vec<_>>(),
            },
        ),
        Event::GrantsFixed {
            grants,
            by,
            model,
            usage,
            cost_micros,
        } => (
            "grants_fixed",
            facts! {
                by: by, model: model, grants_sha256: sha256(serde_json::to_string(grants).unwrap_or_default().as_bytes()),
                tools: grants.iter().map(|g| g.tool.clone()).collect::<Vec<_>>(),
                input_tokens: usage.input_tokens, output_tokens: usage.output_tokens,
                cost_usd: *cost_micros as f64 / 1e6,
            },
        ),
        Event::ApprovalRequested {
            approval_id,
            call_id,
            tool,
            args,
            policies,
            reasons,
            labels,
            expires_at_ms,
            provenance,
        } => (
            "approval_requested",
            facts! {approval_id: approval_id, call_id: call_id, tool: tool, args: redact_args(state, tool, args.clone(), keyed_hash), policies: policies, reasons: reasons, labels: labels, expires_at_ms: expires_at_ms, provenance: provenance},
        ),
        Event::ApprovalDecided {
            approval_id,
            approved,
            by,
            note,
            expired,
        } => (
            "approval_decided",
            facts! {approval_id: approval_id, approved: approved, by: by, note: note, expired: expired},
        ),
        Event::ModelRequested {
            step,
            attempt,
            model,
            messages,
            tools,
        } => (
            "model_requested",
            facts! {step: step, attempt: attempt, model: model, messages: messages, tools: tools},
        ),
        Event::ModelReplied {
            step,
            usage,
            latency_us,
            stop_reason,
            tool_calls,
            model,
            cost_micros,
            ..
        } => (
            "model_call",
            facts! {
                step: step, provider: state.started().map(|s| s.provider.clone()),
                model: if model.is_empty() { state.started().map(|s| s.model.clone()).unwrap_or_default() } else { model.clone() },
                input_tokens: usage.input_tokens, output_tokens: usage.output_tokens, latency_us: latency_us,
                stop_reason: stop_reason, tool_calls: tool_calls.len(), cost_usd: *cost_micros as f64 / 1e6,
            },
        ),
        Event::ModelFailed {
            step,
            attempt,
            error,
            will_retry,
            ..
        } => (
            "model_call_failed",
            facts! {step: step, attempt: attempt, error: error, will_retry: will_retry},
        ),
        Event::ToolRejected {
            call_id,
            tool,
            reason,
            ..
        } => (
            "tool_rejected",
            facts! {call_id: call_id, tool: tool, reason: reason},
        ),
        Event::ToolIntent {
            call_id,
            tool,
            attempt,
            idempotent,
            ..
        } => (
            "tool_intent",
            facts! {call_id: call_id, tool: tool, attempt: attempt, idempotent: idempotent},
        ),
        Event::ToolOutcome {
            call_id,
            ok,
            output,
            duration_us,
            labels,
        } => (
            "tool_outcome",
            facts! {
                call_id: call_id, tool: tool_of(state, call_id),
                ok: ok, duration_us: duration_us, output_sha256: sha256(output.to_string().as_bytes()),
                labels: labels,
            },
        ),
        Event::ToolInDoubt {
            call_id,
            reason,
            duration_us,
        } => (
            "tool_in_doubt",
            facts! {call_id: call_id, tool: tool_of(state, call_id), reason: reason, duration_us: duration_us},
        ),
        Event::CallReconciled {
            call_id,
            happened,
            output,
            by,
            note,
        } => (
            "call_reconciled",
            facts! {call_id: call_id, happened: happened, by: by, note: note, output_sha256: sha256(output.to_string().as_bytes())},
        ),
        Event::RunSuspended { approvals } => ("run_suspended", facts! {approvals: approvals}),
        Event::RunEnded {
            status,
            reason,
            call_id,
            ..
        } => (
            "run_ended",
            facts! {status: status, reason: reason, call_id: call_id},
        ),
        Event::Notice {
            kind,
            subject,
            detail,
            call_id,
        } => (
            "notice",
            facts! {kind: kind, subject: subject, detail: detail, call_id: call_id},
        ),
        Event::ClientResults { results, carried } => (
            "client_results",
            facts! {
                carried: carried,
                results: results.iter().map(|r| json!({
                    "call_id": r.call_id, "tool": r.tool, "labels": r.labels,
                    "output_sha256": sha256(r.output.to_string().as_bytes()),
                })).collect::<Vec<_>>(),
            },
        ),
        Event::ToolHandedOff { call_id } => (
            "tool_handed_off",
            facts! {call_id: call_id, tool: tool_of(state, call_id)},
        ),
    };
    Entry {
        at_ms: stored.at_ms,
        kind: kind.to_owned(),
        run_id: Some(run_id.to_owned()),
        event: Some(stored.seq),
        data,
    }
}

/// The records of a run's events after `cursor` (the last event the trail holds), in order:
/// what a crash left out.
pub(crate) fn missing(
    run_id: &str,
    events: &[StoredEvent],
    cursor: u64,
    keyed_hash: &dyn Fn(&[u8]) -> String,
) -> Result<Vec<Entry>, StateError> {
    let mut state = RunState::default();
    let mut out = Vec::new();
    for stored in events {
        state.apply(stored)?;
        if stored.seq > cursor {
            out.push(entry_for(run_id, stored, &state, keyed_hash));
        }
    }
    Ok(out)
}

/// The audit record kind an event of this type becomes (for cross-checking the trail against
/// the log).
pub(crate) fn record_kind(event: &Event) -> &'static str {
    match event {
        Event::ModelJudged { .. } | Event::ToolJudged { .. } | Event::AnswerJudged { .. } => {
            "decision"
        }
        Event::ModelReplied { .. } => "model_call",
        Event::ModelFailed { .. } => "model_call_failed",
        other => other.kind(),
    }
}

#[cfg(test)]
mod tests;
