//! What the model is sent each step: token counts (tiktoken for OpenAI-family models, an
//! estimate of one token per four bytes for others), and compaction that elides the oldest tool
//! outputs to stay within the context budget. Only tool outputs are ever elided, so the task (the
//! first message), the model's own turns (and so the calls awaiting approval), sub-agent results
//! and the most recent messages stay; the instructions and the operator's pinned constraints are
//! in the system prompt, which is never compacted. Compaction is a pure function of the
//! conversation, so a resumed run rebuilds exactly the context the crashed one would have sent.

use std::collections::HashSet;

use rein_core::Message;

/// How tokens are counted for a model.
#[derive(Clone, Copy)]
pub enum TokenCounter {
    /// OpenAI's BPE (`o200k_base` or `cl100k_base`).
    Tiktoken(&'static tiktoken_rs::CoreBPE),
    /// One token per four bytes, rounded up (the documented estimate for other models).
    Estimate,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenCounter::Tiktoken(_) => f.write_str("Tiktoken"),
            TokenCounter::Estimate => f.write_str("Estimate"),
        }
    }
}

impl TokenCounter {
    /// The counter for a provider kind and model: tiktoken for OpenAI models it knows.
    pub fn for_model(provider_kind: &str, model: &str) -> TokenCounter {
        if provider_kind != "openai" {
            return TokenCounter::Estimate;
        }
        let o200k = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4"];
        if o200k.iter().any(|p| model.starts_with(p)) {
            TokenCounter::Tiktoken(tiktoken_rs::o200k_base_singleton())
        } else if model.starts_with("gpt-4") || model.starts_with("gpt-3.5") {
            TokenCounter::Tiktoken(tiktoken_rs::cl100k_base_singleton())
        } else {
            TokenCounter::Estimate
        }
    }

    /// Tokens in `text`.
    pub fn count(&self, text: &str) -> u64 {
        match self {
            TokenCounter::Tiktoken(bpe) => bpe.encode_ordinary(text).len() as u64,
            TokenCounter::Estimate => rein_model::estimate_tokens(text),
        }
    }

    /// Tokens of one message, with a few for its framing.
    pub fn message(&self, message: &Message) -> u64 {
        4 + match message {
            Message::User { text } => self.count(text),
            Message::Assistant { text, tool_calls } => {
                text.as_deref().map(|t| self.count(t)).unwrap_or(0)
                    + tool_calls
                        .iter()
                        .map(|c| self.count(&c.name) + self.count(&c.arguments.to_string()))
                        .sum::<u64>()
            }
            Message::Tool { content, .. } => self.count(content),
        }
    }
}

/// The conversation to send, and what compaction elided to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    /// The messages, tool outputs elided where needed.
    pub messages: Vec<Message>,
    /// Ids of the calls whose outputs were elided, oldest first.
    pub elided: Vec<String>,
    /// Tokens of the conversation before and after.
    pub tokens_before: u64,
    /// After.
    pub tokens_after: u64,
}

/// Elides the oldest tool outputs until the conversation (whose per-message token counts are
/// `counts`) fits in `max_tokens`, keeping the last `keep_recent` messages and the outputs of
/// `pinned_tools` (sub-agents) whole.
pub fn compact(
    messages: &[Message],
    counts: &[u64],
    max_tokens: u64,
    keep_recent: usize,
    pinned_tools: &HashSet<String>,
    counter: TokenCounter,
) -> Compacted {
    let before: u64 = counts.iter().sum();
    let mut total = before;
    let mut out = messages.to_vec();
    let mut elided = Vec::new();
    let eligible_end = messages.len().saturating_sub(keep_recent);
    for (i, message) in messages.iter().enumerate().take(eligible_end) {
        if total <= max_tokens {
            break;
        }
        if let Message::Tool {
            call_id,
            name,
            is_error,
            ..
        } = message
        {
            if pinned_tools.contains(name) {
                continue;
            }
            let note = format!(
                "[elided by rein to fit the context budget: the output of {name} (call {call_id}), {} tokens]",
                counts[i]
            );
            let replacement = Message::Tool {
                call_id: call_id.clone(),
                name: name.clone(),
                content: note,
                is_error: *is_error,
            };
            let new_count = counter.message(&replacement);
            total = total - counts[i] + new_count.min(counts[i]);
            out[i] = replacement;
            elided.push(call_id.clone());
        }
    }
    Compacted {
        messages: out,
        elided,
        tokens_before: before,
        tokens_after: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(id: &str, name: &str, size: usize) -> Message {
        Message::Tool {
            call_id: id.into(),
            name: name.into(),
            content: "x".repeat(size),
            is_error: false,
        }
    }

    #[test]
    fn oldest_tool_outputs_go_first_and_pinned_ones_stay() {
        let messages = vec![
            Message::User {
                text: "the task".into(),
            },
            tool("c1", "lookup", 400),
            tool("c2", "research", 400),
            tool("c3", "lookup", 400),
            tool("c4", "lookup", 400),
        ];
        let counter = TokenCounter::Estimate;
        let counts: Vec<u64> = messages.iter().map(|m| counter.message(m)).collect();
        let pinned: HashSet<String> = ["research".to_owned()].into();
        let c = compact(&messages, &counts, 300, 1, &pinned, counter);
        // c1 and c3 elided (c2 is a pinned sub-agent result, c4 is recent).
        assert_eq!(c.elided, vec!["c1", "c3"]);
        assert!(c.tokens_after <= 300, "{}", c.tokens_after);
        assert_eq!(c.messages[0], messages[0]);
        assert_eq!(c.messages[2], messages[2]);
        assert_eq!(c.messages[4], messages[4]);
        // Under budget: nothing changes.
        let c = compact(&messages, &counts, 10_000, 1, &pinned, counter);
        assert!(c.elided.is_empty());
        assert_eq!(c.messages, messages);
    }

    #[test]
    fn tiktoken_counts_openai_models() {
        let counter = TokenCounter::for_model("openai", "gpt-4o-mini");
        assert!(matches!(counter, TokenCounter::Tiktoken(_)));
        assert_eq!(counter.count("hello world"), 2);
        assert!(matches!(
            TokenCounter::for_model("anthropic", "claude-sonnet-4"),
            TokenCounter::Estimate
        ));
    }
}
