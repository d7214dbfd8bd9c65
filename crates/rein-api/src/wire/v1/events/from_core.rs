//! Conversions from the core's events to the wire's: explicit, field by field, so a change on
//! either side is a compile error here rather than a silent change of the wire format.

use super::*;
use rein_core as core;

impl From<core::EndState> for EndState {
    fn from(s: core::EndState) -> EndState {
        match s {
            core::EndState::Completed => EndState::Completed,
            core::EndState::Failed => EndState::Failed,
            core::EndState::BudgetExhausted => EndState::BudgetExhausted,
            core::EndState::NeedsReconciliation => EndState::NeedsReconciliation,
            core::EndState::AwaitingApproval => EndState::AwaitingApproval,
            core::EndState::Denied => EndState::Denied,
            core::EndState::Partial => EndState::Partial,
            core::EndState::Cancelled => EndState::Cancelled,
        }
    }
}

impl From<core::Verdict> for Verdict {
    fn from(v: core::Verdict) -> Verdict {
        match v {
            core::Verdict::Allow => Verdict::Allow,
            core::Verdict::Deny => Verdict::Deny,
            core::Verdict::Ask => Verdict::Ask,
        }
    }
}

impl From<core::Usage> for Usage {
    fn from(u: core::Usage) -> Usage {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
        }
    }
}

impl From<core::ToolCall> for ToolCall {
    fn from(c: core::ToolCall) -> ToolCall {
        ToolCall {
            id: c.id,
            name: c.name,
            arguments: c.arguments,
            invalid_arguments: c.invalid_arguments,
        }
    }
}

impl From<core::grants::Grant> for Grant {
    fn from(g: core::grants::Grant) -> Grant {
        Grant {
            tool: g.tool,
            args: g
                .args
                .into_iter()
                .map(|(k, c)| (k, serde_json::to_value(c).unwrap_or(Value::Null)))
                .collect(),
            max_calls: g.max_calls,
        }
    }
}

impl From<core::RunStarted> for RunStarted {
    fn from(s: core::RunStarted) -> RunStarted {
        RunStarted {
            agent: s.agent,
            agent_dir: s.agent_dir,
            agent_digest: s.agent_digest,
            workspace: s.workspace,
            task: s.task,
            instructions: s.instructions,
            provider: s.provider,
            model: s.model,
            limits: Limits {
                max_steps: s.limits.max_steps,
                wall_clock_ms: s.limits.wall_clock_ms,
            },
            tools: s.tools,
            user: s.user,
            tenant: s.tenant,
            parent: s.parent.map(|p| ParentRef {
                run_id: p.run_id,
                call_id: p.call_id,
            }),
            sensitive: s.sensitive,
            grants: s.grants.map(|g| g.into_iter().map(Into::into).collect()),
            data: s.data,
        }
    }
}

impl From<core::Event> for Event {
    fn from(e: core::Event) -> Event {
        match e {
            core::Event::RunStarted(s) => Event::RunStarted((*s).into()),
            core::Event::RunResumed {
                attempt,
                agent_changed,
            } => Event::RunResumed {
                attempt,
                agent_changed,
            },
            core::Event::ModelRequested {
                step,
                attempt,
                model,
                messages,
                tools,
            } => Event::ModelRequested {
                step,
                attempt,
                model,
                messages,
                tools,
            },
            core::Event::ModelReplied {
                step,
                text,
                tool_calls,
                usage,
                latency_us,
                stop_reason,
                stop_sequence,
                model,
                cost_micros,
            } => Event::ModelReplied {
                step,
                text,
                tool_calls: tool_calls.into_iter().map(Into::into).collect(),
                usage: usage.into(),
                latency_us,
                stop_reason,
                stop_sequence,
                model,
                cost_micros,
            },
            core::Event::ModelFailed {
                step,
                attempt,
                error,
                will_retry,
                retry_in_ms,
            } => Event::ModelFailed {
                step,
                attempt,
                error,
                will_retry,
                retry_in_ms,
            },
            core::Event::ToolRejected {
                step,
                call_id,
                tool,
                reason,
            } => Event::ToolRejected {
                step,
                call_id,
                tool,
                reason,
            },
            core::Event::ToolIntent {
                step,
                call_id,
                tool,
                args,
                idempotent,
                attempt,
                labels,
                field_labels,
                data,
            } => Event::ToolIntent {
                step,
                call_id,
                tool,
                args,
                idempotent,
                attempt,
                labels,
                field_labels,
                data,
            },
            core::Event::ToolJudged {
                step,
                call_id,
                tool,
                verdict,
                policies,
                reasons,
                labels,
                approved_by,
                provenance,
            } => Event::ToolJudged {
                step,
                call_id,
                tool,
                verdict: verdict.into(),
                policies,
                reasons,
                labels,
                approved_by,
                provenance,
            },
            core::Event::ApprovalRequested {
                approval_id,
                call_id,
                tool,
                args,
                policies,
                reasons,
                labels,
                expires_at_ms,
                provenance,
            } => Event::ApprovalRequested {
                approval_id,
                call_id,
                tool,
                args,
                policies,
                reasons,
                labels,
                expires_at_ms,
                provenance,
            },
            core::Event::ApprovalDecided {
                approval_id,
                approved,
                by,
                note,
                expired,
            } => Event::ApprovalDecided {
                approval_id,
                approved,
                by,
                note,
                expired,
            },
            core::Event::RunSuspended { approvals } => Event::RunSuspended { approvals },
            core::Event::ModelJudged {
                step,
                model,
                verdict,
                policies,
                reasons,
            } => Event::ModelJudged {
                step,
                model,
                verdict: verdict.into(),
                policies,
                reasons,
            },
            core::Event::ToolOutcome {
                call_id,
                ok,
                output,
                duration_us,
                labels,
            } => Event::ToolOutcome {
                call_id,
                ok,
                output,
                duration_us,
                labels,
            },
            core::Event::ToolInDoubt {
                call_id,
                reason,
                duration_us,
            } => Event::ToolInDoubt {
                call_id,
                reason,
                duration_us,
            },
            core::Event::CallReconciled {
                call_id,
                happened,
                output,
                by,
                note,
            } => Event::CallReconciled {
                call_id,
                happened,
                output,
                by,
                note,
            },
            core::Event::GrantsFixed {
                grants,
                by,
                model,
                usage,
                cost_micros,
            } => Event::GrantsFixed {
                grants: grants.into_iter().map(Into::into).collect(),
                by,
                model,
                usage: usage.into(),
                cost_micros,
            },
            core::Event::AnswerJudged {
                step,
                verdict,
                policies,
                reasons,
                text,
                stripped,
                approved_by,
            } => Event::AnswerJudged {
                step,
                verdict: verdict.into(),
                policies,
                reasons,
                text,
                stripped,
                approved_by,
            },
            core::Event::Notice {
                kind,
                subject,
                detail,
                call_id,
            } => Event::Notice {
                kind,
                subject,
                detail,
                call_id,
            },
            core::Event::ClientResults { results, carried } => Event::ClientResults {
                carried,
                results: results
                    .into_iter()
                    .map(|r| ClientResult {
                        call_id: r.call_id,
                        tool: r.tool,
                        labels: r.labels,
                        output: r.output,
                    })
                    .collect(),
            },
            core::Event::ToolHandedOff { call_id } => Event::ToolHandedOff { call_id },
            core::Event::RunEnded {
                status,
                output,
                reason,
                call_id,
            } => Event::RunEnded {
                status: status.into(),
                output,
                reason,
                call_id,
            },
        }
    }
}

impl From<core::StoredEvent> for EventRecord {
    fn from(e: core::StoredEvent) -> EventRecord {
        EventRecord {
            seq: e.seq,
            at_ms: e.at_ms,
            event: e.event.into(),
        }
    }
}
