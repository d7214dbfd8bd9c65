//! From the engine's and the store's types to the wire's.

use crate::{Error, v1};

/// Grants from the wire, checked: each constraint must be a value or a rule rein knows.
pub(crate) fn grants(list: &[v1::Grant]) -> Result<Vec<rein_core::grants::Grant>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, g)| {
            let value = serde_json::to_value(g).map_err(|e| Error::Internal(e.to_string()))?;
            serde_json::from_value(value).map_err(|e| {
                Error::Invalid(format!(
                    "grant {} (`{}`): {e}; a constraint is a value or one of {{\"one_of\": [..]}}, {{\"max\": n}}, {{\"min\": n}}, {{\"prefix\": \"..\"}}, {{\"any\": true}}",
                    i + 1,
                    g.tool
                ))
            })
        })
        .collect()
}

pub(crate) fn report(r: rein_engine::RunReport) -> v1::RunReport {
    v1::RunReport {
        run_id: r.run_id,
        agent: r.agent,
        status: r.status.into(),
        steps: r.steps,
        tool_calls: r.tool_calls,
        output: r.output,
        reason: r.reason,
        cost_usd: r.cost_usd,
        completed: r.completed,
        not_completed: r.not_completed,
        call_id: r.call_id,
        usage: r.usage.into(),
        active_ms: r.active_ms,
        workspace: r.workspace,
        approvals: r.approvals,
    }
}

/// A run as listed; `running` says whether a live process drives it now (for a run that has
/// not ended).
pub(crate) fn summary(s: rein_store::RunSummary, running: bool) -> v1::RunSummary {
    let status = match s.status {
        Some(end) => v1::RunStatus::Ended(end.into()),
        None if running => v1::RunStatus::Running,
        None => v1::RunStatus::Interrupted,
    };
    v1::RunSummary {
        id: s.id,
        agent: s.agent,
        task: s.task,
        status,
        user: s.user,
        tenant: s.tenant,
        parent: s.parent,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        events: s.events,
        steps: s.steps,
        cost_usd: s.cost_micros as f64 / 1e6,
    }
}

pub(crate) fn approval(a: rein_store::ApprovalSummary) -> v1::ApprovalSummary {
    v1::ApprovalSummary {
        id: a.id,
        run_id: a.run_id,
        call_id: a.call_id,
        tool: a.tool,
        status: a.status,
        created_ms: a.created_ms,
        expires_ms: a.expires_ms,
        decided_by: a.decided_by,
        tenant: a.tenant,
        arguments: a.args,
    }
}

pub(crate) fn decision(d: rein_core::Decision) -> v1::Decision {
    v1::Decision {
        verdict: d.verdict.into(),
        policies: d.policies,
        reasons: d.reasons,
    }
}

pub(crate) fn usage_row(r: rein_store::UsageRow) -> v1::UsageRow {
    v1::UsageRow {
        key: r.key,
        period: r.period,
        tokens: r.tokens,
        cost_micros: r.cost_micros,
        calls: r.calls,
        max_tokens: r.max_tokens,
        max_cost_micros: r.max_cost_micros,
    }
}

pub(crate) fn trail(t: rein_engine::TrailCheck) -> v1::TrailReport {
    v1::TrailReport {
        runs: t.runs,
        events: t.events,
        filled: t.filled,
        in_progress: t.in_progress,
        legacy: t.legacy,
        problems: t.problems,
    }
}
