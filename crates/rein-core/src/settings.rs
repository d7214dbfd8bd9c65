//! How a model call's caller asks the model to answer, beyond the operator's `[model]` settings:
//! a gateway client's own sampling settings and tool choice, as its API request carried them,
//! handed to whichever provider serves the call (each says them in its own API's words).

/// A caller's settings for one model call. Each is sent only when set. Those the operator also
/// sets give way to the caller's, except `max_tokens`, which may only lower the operator's
/// (what a budget reserves for the call is counted from it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSettings {
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// The most the model may answer, in tokens.
    pub max_tokens: Option<u64>,
    /// Texts that end the answer where the model writes them.
    pub stop: Vec<String>,
    /// Whether and which tool the model must call.
    pub tool_choice: Option<ToolChoice>,
    /// The shape the answer's text must have (none: free text).
    pub format: Option<OutputFormat>,
    /// Whether the model may propose several tool calls in one answer (`false`: at most one).
    pub parallel_tool_calls: Option<bool>,
    /// A seed for sampling, for answers as repeatable as the provider makes them (the OpenAI
    /// APIs' `seed`; the Messages API has none, so it is not sent to an Anthropic provider).
    pub seed: Option<i64>,
    /// How hard a reasoning model thinks before it answers (`low`, `medium`, `high`, ...: the
    /// OpenAI APIs' reasoning effort, sent as given; not sent to an Anthropic provider, whose
    /// thinking has no such setting).
    pub reasoning_effort: Option<String>,
}

/// The shape a model's answer must have: structured output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object (Chat Completions' and Responses' `json_object`; the Messages API has no
    /// such mode, so it is not sent to an Anthropic provider).
    JsonObject,
    /// JSON valid against a schema.
    JsonSchema {
        /// Its name, as the OpenAI APIs require one (`output` when the client gave none).
        name: String,
        /// The schema.
        schema: serde_json::Value,
        /// Whether the provider must keep to it exactly (OpenAI's `strict`), when the client
        /// said.
        strict: Option<bool>,
    },
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// As the model decides (the default).
    Auto,
    /// No tool: text only.
    None,
    /// Some tool, any of those offered.
    Required,
    /// This tool (rein's name for it).
    Tool(String),
}

impl ModelSettings {
    /// The temperature to send where the operator's is `operator`: the caller's; else, if the
    /// caller gave no sampling setting of its own, the operator's (a caller's `top_p` replaces
    /// the operator's sampling too: some models refuse both at once).
    pub fn temperature_over(&self, operator: Option<f32>) -> Option<f32> {
        self.temperature
            .or_else(|| operator.filter(|_| self.top_p.is_none()))
    }

    /// The settings with `max_tokens` at most `cap`: what is sent when the operator's cap is
    /// `cap`.
    pub fn max_tokens_within(&self, cap: u64) -> u64 {
        self.max_tokens.map_or(cap, |m| m.min(cap))
    }

    /// The tool choice to send with `offered` tools: none without tools (an API refuses a
    /// choice with nothing to choose from), and none for a tool not among them (one the client
    /// declared that the operator does not let the model call: the model is not made to call
    /// what it was not offered).
    pub fn tool_choice_for<'a>(&'a self, offered: &[crate::ToolSpec]) -> Option<&'a ToolChoice> {
        match self.tool_choice.as_ref()? {
            _ if offered.is_empty() => None,
            ToolChoice::Tool(name) if !offered.iter().any(|t| &t.name == name) => None,
            choice => Some(choice),
        }
    }

    /// Whether to say the model may call tools in parallel with `offered` tools: not without
    /// tools (an API refuses it with nothing to call).
    pub fn parallel_tool_calls_for(&self, offered: &[crate::ToolSpec]) -> Option<bool> {
        self.parallel_tool_calls.filter(|_| !offered.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> crate::ToolSpec {
        crate::ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    #[test]
    fn a_callers_max_tokens_only_lowers_the_operators() {
        let mut s = ModelSettings::default();
        assert_eq!(s.max_tokens_within(4096), 4096);
        s.max_tokens = Some(100);
        assert_eq!(s.max_tokens_within(4096), 100);
        s.max_tokens = Some(100_000);
        assert_eq!(s.max_tokens_within(4096), 4096);
    }

    #[test]
    fn a_callers_sampling_replaces_the_operators() {
        let mut s = ModelSettings::default();
        assert_eq!(s.temperature_over(Some(0.7)), Some(0.7));
        s.top_p = Some(0.5);
        assert_eq!(
            s.temperature_over(Some(0.7)),
            None,
            "top_p with the operator's temperature"
        );
        s.temperature = Some(0.1);
        assert_eq!(s.temperature_over(Some(0.7)), Some(0.1));
    }

    #[test]
    fn a_tool_choice_is_sent_only_for_tools_offered() {
        let offered = [spec("a"), spec("b")];
        let mut s = ModelSettings {
            tool_choice: Some(ToolChoice::Tool("b".into())),
            ..ModelSettings::default()
        };
        assert_eq!(
            s.tool_choice_for(&offered),
            Some(&ToolChoice::Tool("b".into()))
        );
        assert_eq!(s.tool_choice_for(&offered[..1]), None, "b is not offered");
        s.tool_choice = Some(ToolChoice::Required);
        assert_eq!(s.tool_choice_for(&offered), Some(&ToolChoice::Required));
        assert_eq!(s.tool_choice_for(&[]), None, "nothing to choose from");
    }

    #[test]
    fn parallel_tool_calls_are_said_only_with_tools_offered() {
        let s = ModelSettings {
            parallel_tool_calls: Some(false),
            ..ModelSettings::default()
        };
        assert_eq!(s.parallel_tool_calls_for(&[spec("a")]), Some(false));
        assert_eq!(s.parallel_tool_calls_for(&[]), None);
        assert_eq!(
            ModelSettings::default().parallel_tool_calls_for(&[spec("a")]),
            None
        );
    }
}
