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

    /// Whether two counters count the same way.
    pub fn same_as(&self, other: &TokenCounter) -> bool {
        match (self, other) {
            (TokenCounter::Estimate, TokenCounter::Estimate) => true,
            (TokenCounter::Tiktoken(a), TokenCounter::Tiktoken(b)) => std::ptr::eq(*a, *b),
            _ => false,
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

/// The conversation as the model is sent it, kept up to date step by step: each new message is
/// counted once, and the oldest tool outputs are elided (never un-elided) while the whole passes
/// the budget. Elision only moves forward, so each step costs what is new, not the whole
/// conversation; the result is the same as compacting the whole conversation from scratch, which
/// is what a resumed run does.
#[derive(Debug)]
pub struct ContextWindow {
    counter: TokenCounter,
    messages: Vec<Message>,
    counts: Vec<u64>,
    total: u64,
    /// The first message not yet considered for elision.
    next: usize,
    elided: Vec<String>,
}

impl ContextWindow {
    /// An empty window counting with `counter`.
    pub fn new(counter: TokenCounter) -> ContextWindow {
        ContextWindow {
            counter,
            messages: Vec::new(),
            counts: Vec::new(),
            total: 0,
            next: 0,
            elided: Vec::new(),
        }
    }

    /// Takes in the messages of `all` it has not seen, then, if the whole passes `max_tokens`,
    /// elides the oldest tool outputs (except the last `keep_recent` messages and the outputs of
    /// `pinned_tools`) until it fits. Returns the calls whose outputs this update elided.
    pub fn update(
        &mut self,
        all: &[Message],
        max_tokens: Option<u64>,
        keep_recent: usize,
        pinned_tools: &HashSet<String>,
    ) -> Vec<String> {
        for m in all.iter().skip(self.messages.len()) {
            let count = self.counter.message(m);
            self.messages.push(m.clone());
            self.counts.push(count);
            self.total += count;
        }
        let Some(max_tokens) = max_tokens else {
            return vec![];
        };
        let eligible_end = self.messages.len().saturating_sub(keep_recent);
        let mut newly = Vec::new();
        while self.total > max_tokens && self.next < eligible_end {
            let i = self.next;
            self.next += 1;
            let Message::Tool {
                call_id,
                name,
                is_error,
                ..
            } = &self.messages[i]
            else {
                continue;
            };
            if pinned_tools.contains(name) {
                continue;
            }
            let replacement = Message::Tool {
                call_id: call_id.clone(),
                name: name.clone(),
                content: format!(
                    "[elided by rein to fit the context budget: the output of {name} (call {call_id}), {} tokens]",
                    self.counts[i]
                ),
                is_error: *is_error,
            };
            let count = self.counter.message(&replacement).min(self.counts[i]);
            self.total = self.total - self.counts[i] + count;
            self.counts[i] = count;
            newly.push(call_id.clone());
            self.messages[i] = replacement;
        }
        self.elided.extend(newly.iter().cloned());
        newly
    }

    /// The messages to send.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Their tokens, as counted.
    pub fn tokens(&self) -> u64 {
        self.total
    }

    /// Every call whose output has been elided, oldest first.
    pub fn elided(&self) -> &[String] {
        &self.elided
    }

    /// How it counts.
    pub fn counter(&self) -> TokenCounter {
        self.counter
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
        let pinned: HashSet<String> = ["research".to_owned()].into();
        let mut w = ContextWindow::new(TokenCounter::Estimate);
        // Under budget: nothing changes.
        assert!(w.update(&messages[..3], Some(300), 1, &pinned).is_empty());
        assert_eq!(w.messages(), &messages[..3]);
        // Past it: c1 and c3 elided (c2 is a pinned sub-agent result, c4 is recent).
        assert_eq!(w.update(&messages, Some(300), 1, &pinned), vec!["c1", "c3"]);
        assert!(w.tokens() <= 300, "{}", w.tokens());
        assert_eq!(w.messages()[0], messages[0]);
        assert_eq!(w.messages()[2], messages[2]);
        assert_eq!(w.messages()[4], messages[4]);
        // Built from scratch (a resumed run), the window is the same.
        let mut fresh = ContextWindow::new(TokenCounter::Estimate);
        fresh.update(&messages, Some(300), 1, &pinned);
        assert_eq!(fresh.messages(), w.messages());
        assert_eq!(fresh.elided(), w.elided());
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
