//! Human-readable views of a run's events: the live view of `rein run` and the timeline of
//! `rein runs show` are the same renderer, fed the same events.

use std::collections::HashMap;
use std::io::Write;

use anstyle::{AnsiColor, Style};
use rein_api::v1::{EndState, Event, EventRecord, Verdict};
use serde_json::Value;

/// Turns events into lines of text.
pub(crate) struct Renderer {
    color: bool,
    /// Show each event's time relative to the run's start (the timeline view).
    timestamps: bool,
    start_ms: Option<u64>,
    intents: HashMap<String, (String, Value, u64)>,
    /// The arguments of each proposed call, by call id (a denied call is shown with them).
    proposed: HashMap<String, Value>,
}

const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();
const GREEN: Style = AnsiColor::Green.on_default();
const RED: Style = AnsiColor::Red.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const CYAN: Style = AnsiColor::Cyan.on_default();

impl Renderer {
    pub(crate) fn new(color: bool, timestamps: bool) -> Renderer {
        Renderer {
            color,
            timestamps,
            start_ms: None,
            intents: HashMap::new(),
            proposed: HashMap::new(),
        }
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// The lines for one event (possibly none).
    pub(crate) fn lines(&mut self, run_id: &str, stored: &EventRecord) -> Vec<String> {
        let start = *self.start_ms.get_or_insert(stored.at_ms);
        let stamp = if self.timestamps {
            self.paint(
                DIM,
                &format!(
                    "{:>9} ",
                    format!("+{}", fmt_ms(stored.at_ms.saturating_sub(start)))
                ),
            )
        } else {
            String::new()
        };
        let mut out = Vec::new();
        match &stored.event {
            Event::RunStarted(s) => {
                out.push(format!(
                    "{stamp}{} {} {}",
                    self.paint(BOLD, "▶ run"),
                    self.paint(CYAN, run_id),
                    self.paint(
                        DIM,
                        &format!(
                            "agent {} · model {}/{} · tools {}",
                            s.agent,
                            s.provider,
                            s.model,
                            s.tools.join(", ")
                        )
                    )
                ));
                out.push(format!("{stamp}  task: {}", one_line(&s.task, 200)));
            }
            Event::RunResumed {
                attempt,
                agent_changed,
            } => {
                let note = if *agent_changed {
                    " (the agent's configuration changed since the run started)"
                } else {
                    ""
                };
                out.push(format!(
                    "{stamp}{} {}",
                    self.paint(BOLD, &format!("↻ resumed (attempt {attempt})")),
                    self.paint(YELLOW, note)
                ));
            }
            Event::ModelRequested { .. } => {}
            Event::ModelReplied {
                step,
                text,
                tool_calls,
                usage,
                latency_us,
                model,
                cost_micros,
                ..
            } => {
                for call in tool_calls {
                    self.proposed
                        .insert(call.id.clone(), call.arguments.clone());
                }
                let calls: Vec<&str> = tool_calls.iter().map(|c| c.name.as_str()).collect();
                let cost = if *cost_micros > 0 {
                    format!(", ${:.6}", *cost_micros as f64 / 1e6)
                } else {
                    String::new()
                };
                let by = if model.is_empty() {
                    String::new()
                } else {
                    format!("{model}, ")
                };
                let what = match (text, calls.is_empty()) {
                    (Some(t), _) => format!("“{}”", one_line(t, 100)),
                    (None, false) => String::new(),
                    (None, true) => "(no text)".into(),
                };
                let arrow = if calls.is_empty() {
                    String::new()
                } else {
                    format!(" → {}", calls.join(", "))
                };
                out.push(format!(
                    "{stamp}  {} {what}{arrow} {}",
                    self.paint(BOLD, &format!("step {step}")),
                    self.paint(
                        DIM,
                        &format!(
                            "({by}{} in / {} out tokens{cost}, {})",
                            usage.input_tokens,
                            usage.output_tokens,
                            fmt_us(*latency_us)
                        )
                    )
                ));
            }
            Event::ModelFailed {
                step,
                attempt,
                error,
                will_retry,
                retry_in_ms,
            } => {
                let next = match (will_retry, retry_in_ms) {
                    (true, Some(ms)) => format!("; retrying in {}", fmt_ms(*ms)),
                    _ => "; giving up".into(),
                };
                out.push(format!(
                    "{stamp}  {} {}",
                    self.paint(YELLOW, &format!("! step {step} try {attempt} failed:")),
                    one_line(&format!("{error}{next}"), 200)
                ));
            }
            Event::ToolJudged {
                call_id,
                tool,
                verdict: Verdict::Deny,
                policies,
                reasons,
                provenance,
                ..
            } => {
                let args = self
                    .proposed
                    .get(call_id)
                    .map(|a| one_line(&a.to_string(), 120))
                    .unwrap_or_default();
                out.push(format!(
                    "{stamp}    {} {tool} {} by {}: {}",
                    self.paint(RED, "✗ denied"),
                    self.paint(DIM, &args),
                    if policies.is_empty() {
                        "default deny".to_owned()
                    } else {
                        policies.join(", ")
                    },
                    one_line(&reasons.join("; "), 160)
                ));
                let from = origins_line(provenance);
                if !from.is_empty() {
                    out.push(format!("{stamp}      {}", self.paint(DIM, &from)));
                }
            }
            Event::GrantsFixed {
                grants, by, model, ..
            } => {
                let tools: Vec<String> = grants.iter().map(|g| g.tool.clone()).collect();
                out.push(format!(
                    "{stamp}  {} by {by}{}: {}",
                    self.paint(BOLD, "grants fixed"),
                    model
                        .as_ref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default(),
                    if tools.is_empty() {
                        "none".to_owned()
                    } else {
                        tools.join(", ")
                    }
                ));
            }
            Event::AnswerJudged {
                verdict,
                policies,
                reasons,
                stripped,
                ..
            } => {
                if !stripped.is_empty() {
                    out.push(format!(
                        "{stamp}    {} {} link{} from the answer: {}",
                        self.paint(YELLOW, "✂ stripped"),
                        stripped.len(),
                        if stripped.len() == 1 { "" } else { "s" },
                        one_line(&stripped.join(" "), 160)
                    ));
                }
                if *verdict != Verdict::Allow {
                    out.push(format!(
                        "{stamp}    {} the answer by {}: {}",
                        self.paint(
                            if *verdict == Verdict::Deny {
                                RED
                            } else {
                                YELLOW
                            },
                            if *verdict == Verdict::Deny {
                                "✗ withheld"
                            } else {
                                "⏸ held"
                            }
                        ),
                        policies.join(", "),
                        one_line(&reasons.join("; "), 160)
                    ));
                }
            }
            Event::ToolJudged { .. }
            | Event::ModelJudged {
                verdict: Verdict::Allow | Verdict::Ask,
                ..
            } => {}
            Event::Notice {
                kind,
                subject,
                detail,
                ..
            } => {
                out.push(format!(
                    "{stamp}    {} {subject}: {}",
                    self.paint(YELLOW, &format!("• {}", kind.replace('_', " "))),
                    one_line(detail, 200)
                ));
            }
            Event::ClientResults { results, carried } => {
                if !carried.is_empty() {
                    out.push(format!(
                        "{stamp}    {} {}",
                        self.paint(CYAN, "← carried from the conversation"),
                        carried.join(", ")
                    ));
                }
                for r in results {
                    let labels = if r.labels.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", r.labels.join(", "))
                    };
                    out.push(format!(
                        "{stamp}    {} {} {}{labels}: {}",
                        self.paint(CYAN, "← client result"),
                        r.tool,
                        self.paint(DIM, &r.call_id),
                        one_line(&r.output.to_string(), 200)
                    ));
                }
            }
            Event::ToolHandedOff { call_id } => {
                let tool = self
                    .intents
                    .get(call_id)
                    .map(|(t, _, _)| t.clone())
                    .unwrap_or_default();
                out.push(format!(
                    "{stamp}    {} {tool} {}",
                    self.paint(GREEN, "→ handed to the client"),
                    self.paint(DIM, call_id)
                ));
            }
            Event::ModelJudged { model, reasons, .. } => {
                out.push(format!(
                    "{stamp}  {} model {model}: {}",
                    self.paint(RED, "✗ denied"),
                    one_line(&reasons.join("; "), 160)
                ));
            }
            Event::ApprovalRequested {
                approval_id,
                tool,
                args,
                reasons,
                ..
            } => {
                out.push(format!(
                    "{stamp}    {} {tool} {} needs approval {}: {}",
                    self.paint(YELLOW, "⏸"),
                    self.paint(DIM, &one_line(&args.to_string(), 80)),
                    self.paint(CYAN, approval_id),
                    one_line(&reasons.join("; "), 120)
                ));
            }
            Event::ApprovalDecided {
                approval_id,
                approved,
                by,
                note,
                expired,
            } => {
                let what = match (approved, expired) {
                    (_, true) => self.paint(RED, "expired"),
                    (true, false) => self.paint(GREEN, &format!("approved by {by}")),
                    (false, false) => self.paint(RED, &format!("denied by {by}")),
                };
                let note = note
                    .as_ref()
                    .map(|n| format!(": {}", one_line(n, 120)))
                    .unwrap_or_default();
                out.push(format!("{stamp}  approval {approval_id} {what}{note}"));
            }
            Event::CallReconciled {
                call_id,
                happened,
                by,
                note,
                ..
            } => {
                let what = if *happened {
                    "happened"
                } else {
                    "did not happen; it will run again"
                };
                let note = note
                    .as_ref()
                    .map(|n| format!(": {}", one_line(n, 120)))
                    .unwrap_or_default();
                out.push(format!(
                    "{stamp}{} call {call_id} {what}, says {by}{note}",
                    self.paint(BOLD, "↺ reconciled")
                ));
            }
            Event::RunSuspended { approvals } => {
                out.push(format!(
                    "{stamp}{} waiting for {} approval{}: rein approvals list",
                    self.paint(YELLOW.bold(), "⏸ awaiting_approval"),
                    approvals.len(),
                    if approvals.len() == 1 { "" } else { "s" }
                ));
            }
            Event::ToolRejected { tool, reason, .. } => {
                out.push(format!(
                    "{stamp}    {} {tool}: {}",
                    self.paint(RED, "✗ rejected"),
                    one_line(reason, 160)
                ));
            }
            Event::ToolIntent {
                call_id,
                tool,
                args,
                attempt,
                ..
            } => {
                self.intents
                    .insert(call_id.clone(), (tool.clone(), args.clone(), stored.at_ms));
                if *attempt > 1 {
                    out.push(format!("{stamp}    {} {tool} (try {attempt}: its outcome was unknown and it is idempotent)", self.paint(YELLOW, "↻ repeating")));
                }
            }
            Event::ToolOutcome {
                call_id,
                ok,
                output,
                duration_us,
                ..
            } => {
                let (tool, args) = self
                    .intents
                    .get(call_id)
                    .map(|(t, a, _)| (t.clone(), a.to_string()))
                    .unwrap_or_default();
                let mark = if *ok {
                    self.paint(GREEN, "✓")
                } else {
                    self.paint(RED, "✗")
                };

                out.push(format!(
                    "{stamp}    {mark} {tool} {} {} {}",
                    self.paint(DIM, &one_line(&args, 80)),
                    fmt_output(*ok, output),
                    self.paint(DIM, &fmt_us(*duration_us))
                ));
            }
            Event::ToolInDoubt {
                call_id,
                reason,
                duration_us,
            } => {
                let tool = self
                    .intents
                    .get(call_id)
                    .map(|(t, _, _)| t.clone())
                    .unwrap_or_default();
                out.push(format!(
                    "{stamp}    {} {tool} {}: {} {}",
                    self.paint(RED, "? in doubt"),
                    call_id,
                    one_line(reason, 160),
                    self.paint(DIM, &fmt_us(*duration_us))
                ));
            }
            Event::RunEnded {
                status,
                output,
                reason,
                call_id,
            } => {
                let style = match status {
                    EndState::Completed => GREEN,
                    EndState::Failed | EndState::NeedsReconciliation => RED,
                    EndState::BudgetExhausted
                    | EndState::AwaitingApproval
                    | EndState::Partial
                    | EndState::Cancelled => YELLOW,
                    EndState::Denied => RED,
                };
                out.push(format!(
                    "{stamp}{} {}",
                    self.paint(style.bold(), &format!("■ {status}")),
                    self.paint(DIM, run_id)
                ));
                if let Some(reason) = reason {
                    out.push(format!("{stamp}  why: {reason}"));
                }
                if let Some(call_id) = call_id
                    && let Some((tool, args, _)) = self.intents.get(call_id)
                {
                    out.push(format!(
                        "{stamp}  call in doubt: {call_id} {tool} {}",
                        one_line(&args.to_string(), 200)
                    ));
                }
                if let Some(output) = output {
                    out.push(format!("{stamp}  output: {output}"));
                }
            }
        }
        out
    }

    /// Writes an event's lines to `w`, ignoring a closed pipe.
    pub(crate) fn write(&mut self, w: &mut dyn Write, run_id: &str, stored: &EventRecord) {
        for line in self.lines(run_id, stored) {
            let _ = writeln!(w, "{line}");
        }
    }
}

fn fmt_output(ok: bool, output: &Value) -> String {
    if !ok {
        let msg = output
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("failed");
        return format!("→ error: {}", one_line(msg, 160));
    }
    format!("→ {}", one_line(&output.to_string(), 100))
}

/// The first `max` characters of `text` on one line.
pub(crate) use rein_api::text::one_line;

pub(crate) fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else {
        fmt_ms(us / 1_000)
    }
}

pub(crate) fn fmt_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// `from: to=tool:mail.read|untrusted, amount=task`: where each argument's values came from.
pub(crate) fn origins_line(provenance: &std::collections::BTreeMap<String, Vec<String>>) -> String {
    if provenance.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = provenance
        .iter()
        .filter(|(_, o)| !o.is_empty())
        .map(|(arg, origins)| format!("{arg}={}", origins.join("|")))
        .collect();
    format!("from: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_text_are_shortened_for_people() {
        assert_eq!(fmt_us(999), "999 µs");
        assert_eq!(fmt_us(12_345), "12 ms");
        assert_eq!(fmt_ms(1_500), "1.5 s");
        assert_eq!(fmt_ms(125_000), "2m05s");
        assert_eq!(fmt_ms(86_399_000), "23h59m");
        assert_eq!(one_line("a\n  b", 10), "a b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
