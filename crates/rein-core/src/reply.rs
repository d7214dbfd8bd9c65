//! What rein accepts of a model's reply before anything is recorded.
//!
//! A model's reply is adversarial input: an OpenAI-compatible server, or a model steered by
//! injected text, can send tool calls that share an id, ids made of path characters, arguments of
//! many megabytes, or hundreds of calls at once. rein owns call ids: every call gets
//! `call_<step>_<n>`, unique in the run and made of safe characters whatever the provider sent,
//! so ids can name child runs and files. Calls past the per-reply limit and arguments past the
//! size limit are refused by name (the model is told why), and a reply can never make the log
//! grow without bound.

use serde_json::Value;

use crate::message::ToolCall;

/// Limits on one model reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Tool calls considered per reply; later ones are refused.
    pub max_calls: usize,
    /// Bytes of one call's arguments (as compact JSON); larger ones are refused.
    pub max_args_bytes: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            max_calls: 32,
            max_args_bytes: 256 * 1024,
        }
    }
}

/// Calls kept in the log at most, refused ones included; a reply with more has the rest dropped
/// (and a notice says how many).
pub const MAX_RECORDED_CALLS: usize = 256;

/// The longest tool name kept; a longer one names no tool and is cut.
pub const MAX_TOOL_NAME_CHARS: usize = 128;

/// A call refused before judging, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The call's id (rein's).
    pub call_id: String,
    /// The tool it named.
    pub tool: String,
    /// Why, for the model.
    pub reason: String,
}

/// A reply's calls as rein records them.
#[derive(Debug, Clone, PartialEq)]
pub struct Sanitized {
    /// The calls, with rein's ids, in the model's order.
    pub calls: Vec<ToolCall>,
    /// Calls among them refused already.
    pub refused: Vec<Refusal>,
    /// Calls past [`MAX_RECORDED_CALLS`], dropped.
    pub dropped: usize,
}

/// The id rein gives the `index`th (from 0) call of a step's reply.
pub fn call_id(step: u32, index: usize) -> String {
    format!("call_{step}_{}", index + 1)
}

/// Whether a call id is one rein could have assigned: ASCII letters, digits, `_` and `-`, at most
/// 64 characters. Ids in older logs and from scripts pass too when they keep to these.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Gives every call rein's id and refuses what is too big or too many.
pub fn sanitize_calls(step: u32, calls: Vec<ToolCall>, limits: &ReplyLimits) -> Sanitized {
    let total = calls.len();
    let dropped = total.saturating_sub(MAX_RECORDED_CALLS);
    let mut kept = Vec::with_capacity(total.min(MAX_RECORDED_CALLS));
    let mut refused = Vec::new();
    for (index, mut call) in calls.into_iter().take(MAX_RECORDED_CALLS).enumerate() {
        call.id = call_id(step, index);
        if call.name.chars().count() > MAX_TOOL_NAME_CHARS {
            call.name = format!(
                "{}…",
                call.name
                    .chars()
                    .take(MAX_TOOL_NAME_CHARS)
                    .collect::<String>()
            );
        }
        if index >= limits.max_calls {
            call.arguments = Value::Null;
            call.invalid_arguments = None;
            refused.push(Refusal {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                reason: format!(
                    "this reply proposed {total} tool calls and rein considers at most {} per \
                     reply, so this one was not run; propose it again in a later turn if it is \
                     still needed",
                    limits.max_calls
                ),
            });
        } else {
            let bytes = json_len(&call.arguments);
            if bytes > limits.max_args_bytes {
                call.arguments = Value::String(format!("<{bytes} bytes omitted>"));
                call.invalid_arguments = None;
                refused.push(Refusal {
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    reason: format!(
                        "its arguments are {bytes} bytes and rein accepts at most {} bytes per \
                         call, so it was not run",
                        limits.max_args_bytes
                    ),
                });
            }
        }
        kept.push(call);
    }
    Sanitized {
        calls: kept,
        refused,
        dropped,
    }
}

/// The length of a value's compact JSON, counted without building it.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(id: &str, name: &str, args: Value) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args,
            invalid_arguments: None,
        }
    }

    #[test]
    fn ids_are_rein_s_own_whatever_the_provider_sent() {
        let hostile = vec![
            call("call_x", "a", json!({})),
            call("call_x", "b", json!({})),
            call("../../etc/passwd", "c", json!({})),
            call("", "d", json!({})),
        ];
        let out = sanitize_calls(7, hostile, &ReplyLimits::default());
        let ids: Vec<&str> = out.calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["call_7_1", "call_7_2", "call_7_3", "call_7_4"]);
        assert!(ids.iter().all(|id| is_safe_id(id)));
        assert!(out.refused.is_empty() && out.dropped == 0);
        assert!(!is_safe_id("../x") && !is_safe_id("a/b") && !is_safe_id(""));
    }

    #[test]
    fn too_many_calls_and_huge_arguments_are_refused_by_name_and_the_log_stays_bounded() {
        let limits = ReplyLimits {
            max_calls: 3,
            max_args_bytes: 100,
        };
        let mut calls: Vec<ToolCall> = (0..300)
            .map(|i| call("x", "t", json!({ "i": i })))
            .collect();
        calls[1].arguments = json!({ "blob": "y".repeat(5000) });
        calls[2].name = "n".repeat(10_000);
        let out = sanitize_calls(1, calls, &limits);
        assert_eq!(out.calls.len(), MAX_RECORDED_CALLS);
        assert_eq!(out.dropped, 300 - MAX_RECORDED_CALLS);
        // The second call's arguments are too big; calls from the fourth on are too many.
        assert_eq!(out.refused.len(), 1 + MAX_RECORDED_CALLS - 3);
        assert_eq!(out.refused[0].call_id, "call_1_2");
        assert!(
            out.refused[0].reason.contains("5011 bytes"),
            "{:?}",
            out.refused[0]
        );
        assert!(json_len(&out.calls[1].arguments) < 100);
        assert!(out.refused[1].reason.contains("300 tool calls"));
        assert_eq!(out.calls[3].arguments, Value::Null);
        assert!(out.calls[2].name.chars().count() <= MAX_TOOL_NAME_CHARS + 1);
        assert_eq!(out.calls[0].arguments, json!({"i": 0}));
    }
}
