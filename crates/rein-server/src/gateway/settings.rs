//! A client's own settings for its model call, as each API's request carries them: sampling
//! (`temperature`, `top_p`), its cap on the answer (`max_completion_tokens` or `max_tokens`,
//! `max_output_tokens`), stop texts (`stop`, `stop_sequences`) and which tool the model must call
//! (`tool_choice`, in any of the three APIs' shapes), whether it may call several at once
//! (`parallel_tool_calls`, or the Messages API's `disable_parallel_tool_use`), a `seed` and a
//! reasoning model's effort (`reasoning_effort`, `reasoning.effort`). They go to whichever provider serves the
//! gateway, said in its API's words; a value that is not one of these is refused naming its
//! field, rather than dropped.

use axum::http::StatusCode;
use rein_api::gateway::{ModelSettings, OutputFormat, ToolChoice};
use serde_json::Value;

use super::{Dialect, GwError};

/// The settings fields of a request, as sent (each `None` when absent); each face fills in those
/// its API has.
#[derive(Debug, Default)]
pub(crate) struct Given {
    pub(crate) temperature: Option<Value>,
    pub(crate) top_p: Option<Value>,
    /// Chat Completions' current name for the cap.
    pub(crate) max_completion_tokens: Option<Value>,
    /// Chat Completions' older name for it, and the Messages API's.
    pub(crate) max_tokens: Option<Value>,
    /// The Responses API's.
    pub(crate) max_output_tokens: Option<Value>,
    /// Chat Completions'.
    pub(crate) stop: Option<Value>,
    /// The Messages API's.
    pub(crate) stop_sequences: Option<Value>,
    pub(crate) tool_choice: Option<Value>,
    /// Chat Completions' structured output.
    pub(crate) response_format: Option<Value>,
    /// The Responses API's (its `format`).
    pub(crate) text: Option<Value>,
    /// The Messages API's (its `format`).
    pub(crate) output_config: Option<Value>,
    /// The OpenAI APIs' (the Messages API says it in its `tool_choice`).
    pub(crate) parallel_tool_calls: Option<Value>,
    /// Chat Completions'.
    pub(crate) seed: Option<Value>,
    /// Chat Completions'.
    pub(crate) reasoning_effort: Option<Value>,
    /// The Responses API's (its `effort`).
    pub(crate) reasoning: Option<Value>,
}

fn bad(d: Dialect, message: String) -> GwError {
    GwError::new(d, StatusCode::BAD_REQUEST, message)
}

impl Given {
    /// The settings, or a 400 naming the field that holds no such setting.
    pub(crate) fn settings(self, d: Dialect) -> Result<ModelSettings, GwError> {
        // A number in `0..=max` that an `f32` holds (a larger one would be sent as `null`).
        let fraction = |v: Option<Value>, field: &str, max: f64| -> Result<Option<f32>, GwError> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) if n.as_f64().is_some_and(|f| (0.0..=max).contains(&f)) => {
                    Ok(n.as_f64().map(|f| f as f32))
                }
                Some(other) => Err(bad(
                    d,
                    format!("{field}: {other} is not a number from 0 to {max}"),
                )),
            }
        };
        let (cap_field, cap) = [
            ("max_completion_tokens", self.max_completion_tokens),
            ("max_tokens", self.max_tokens),
            ("max_output_tokens", self.max_output_tokens),
        ]
        .into_iter()
        .find(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null()))
        .unwrap_or(("max_tokens", None));
        let max_tokens = match cap {
            None => None,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => n.as_u64(),
            Some(other) => {
                return Err(bad(
                    d,
                    format!("{cap_field}: {other} is not a whole number of tokens above zero"),
                ));
            }
        };
        let (stop_field, stop) = match (self.stop, self.stop_sequences) {
            (Some(v), _) if !v.is_null() => ("stop", Some(v)),
            (_, v) => ("stop_sequences", v),
        };
        let stop = match stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s),
                    other => Err(bad(d, format!("{stop_field}[{i}]: {other} is not a text"))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(bad(
                    d,
                    format!("{stop_field}: {other} is not a text or a list of texts"),
                ));
            }
        };
        let format = [
            ("response_format", self.response_format),
            ("text.format", inner_of(self.text, "text", "format", d)?),
            (
                "output_config.format",
                inner_of(self.output_config, "output_config", "format", d)?,
            ),
        ]
        .into_iter()
        .find(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null()))
        .map(|(field, v)| output_format(v.unwrap_or_default(), field, d))
        .transpose()?
        .flatten();
        let tool_choice = match self.tool_choice {
            None | Some(Value::Null) => None,
            Some(v) => Some(tool_choice(&v, d)?),
        };
        let parallel_tool_calls = match self.parallel_tool_calls {
            None | Some(Value::Null) => tool_choice
                .as_ref()
                .and_then(|(_, one)| one.map(|one| !one)),
            Some(Value::Bool(b)) => Some(b),
            Some(other) => {
                return Err(bad(
                    d,
                    format!("parallel_tool_calls: {other} is not true or false"),
                ));
            }
        };
        let seed = match self.seed {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(other) => return Err(bad(d, format!("seed: {other} is not a whole number"))),
        };
        let (effort_field, effort) = match (
            self.reasoning_effort,
            inner_of(self.reasoning, "reasoning", "effort", d)?,
        ) {
            (Some(v), _) if !v.is_null() => ("reasoning_effort", Some(v)),
            (_, v) => ("reasoning.effort", v),
        };
        let reasoning_effort = match effort {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(other) => {
                return Err(bad(
                    d,
                    format!(
                        "{effort_field}: {other} is not a reasoning effort (a word such as low, medium or high)"
                    ),
                ));
            }
        };
        Ok(ModelSettings {
            temperature: fraction(self.temperature, "temperature", 2.0)?,
            top_p: fraction(self.top_p, "top_p", 1.0)?,
            max_tokens,
            stop,
            tool_choice: tool_choice.map(|(choice, _)| choice),
            format,
            parallel_tool_calls,
            seed,
            reasoning_effort,
        })
    }
}

/// The setting `name` inside the object `field` of a request (a format in `text` or
/// `output_config`, an effort in `reasoning`), if it has one.
fn inner_of(
    v: Option<Value>,
    field: &str,
    name: &str,
    d: Dialect,
) -> Result<Option<Value>, GwError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(mut o)) => Ok(o.remove(name)),
        Some(other) => Err(bad(d, format!("{field}: {other} is not an object"))),
    }
}

/// A structured output's shape in any of the APIs' words: `{"type": "text"}` (none),
/// `{"type": "json_object"}`, and `{"type": "json_schema", "json_schema": {"name", "schema",
/// "strict"}}` (Chat Completions) or `{"type": "json_schema", "name", "schema", "strict"}`
/// (Responses; the Messages API's has only the schema).
fn output_format(v: Value, field: &str, d: Dialect) -> Result<Option<OutputFormat>, GwError> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputFormat::JsonObject)),
        Some("json_schema") => {
            let spec = v.get("json_schema").unwrap_or(&v);
            let schema = match spec.get("schema") {
                Some(schema @ Value::Object(_)) => schema.clone(),
                _ => {
                    return Err(bad(
                        d,
                        format!("{field}: a `json_schema` format needs its `schema`, an object"),
                    ));
                }
            };
            Ok(Some(OutputFormat::JsonSchema {
                name: spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("output")
                    .to_owned(),
                schema,
                strict: spec.get("strict").and_then(Value::as_bool),
            }))
        }
        _ => Err(bad(
            d,
            format!(
                "{field}: {v} is not an output format rein's gateway takes (text, json_object or json_schema)"
            ),
        )),
    }
}

/// A tool choice in any of the APIs' shapes: `"auto"`, `"none"`, `"required"` (Chat
/// Completions, Responses); `{"type": "function", "function": {"name"}}` (Chat Completions),
/// `{"type": "function", "name"}` (Responses); `{"type": "auto" | "any" | "none"}`, `{"type":
/// "tool", "name"}` (Messages); with whether the Messages API's choice asks for one call at a
/// time (`disable_parallel_tool_use`), if it says.
fn tool_choice(v: &Value, d: Dialect) -> Result<(ToolChoice, Option<bool>), GwError> {
    let kind = match v {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("type").and_then(Value::as_str).unwrap_or_default(),
        _ => "",
    };
    let name = v
        .get("name")
        .or_else(|| v.get("function").and_then(|f| f.get("name")))
        .and_then(Value::as_str);
    let one_at_a_time = match v.get("disable_parallel_tool_use") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(bad(
                d,
                format!("tool_choice.disable_parallel_tool_use: {other} is not true or false"),
            ));
        }
    };
    let choice = match (kind, name) {
        ("auto", _) => ToolChoice::Auto,
        ("none", _) => ToolChoice::None,
        ("required" | "any", _) => ToolChoice::Required,
        ("function" | "tool", Some(name)) => ToolChoice::Tool(name.to_owned()),
        _ => {
            return Err(bad(
                d,
                format!(
                    "tool_choice: {v} is not a tool choice rein's gateway takes (auto, none, required or any, or one function tool by name)"
                ),
            ));
        }
    };
    Ok((choice, one_at_a_time))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn read(body: Value) -> Result<ModelSettings, String> {
        let field = |name: &str| body.get(name).cloned();
        Given {
            temperature: field("temperature"),
            top_p: field("top_p"),
            max_completion_tokens: field("max_completion_tokens"),
            max_tokens: field("max_tokens"),
            max_output_tokens: field("max_output_tokens"),
            stop: field("stop"),
            stop_sequences: field("stop_sequences"),
            tool_choice: field("tool_choice"),
            response_format: field("response_format"),
            text: field("text"),
            output_config: field("output_config"),
            parallel_tool_calls: field("parallel_tool_calls"),
            seed: field("seed"),
            reasoning_effort: field("reasoning_effort"),
            reasoning: field("reasoning"),
        }
        .settings(Dialect::OpenAi)
        .map_err(|e| e.message)
    }

    #[test]
    fn each_apis_names_and_shapes_read_as_one_setting() {
        let chat = read(
            json!({"temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 50,
            "stop": "END", "tool_choice": {"type": "function", "function": {"name": "a"}}}),
        )
        .unwrap();
        assert_eq!(chat.temperature, Some(0.2));
        assert_eq!(chat.top_p, Some(0.9));
        assert_eq!(chat.max_tokens, Some(50));
        assert_eq!(chat.stop, ["END"]);
        assert_eq!(chat.tool_choice, Some(ToolChoice::Tool("a".into())));
        let messages = read(json!({"max_tokens": 70, "stop_sequences": ["x", "y"],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}}))
        .unwrap();
        assert_eq!(messages.max_tokens, Some(70));
        assert_eq!(messages.stop, ["x", "y"]);
        assert_eq!(messages.tool_choice, Some(ToolChoice::Required));
        assert_eq!(messages.parallel_tool_calls, Some(false));
        let chat = read(json!({"parallel_tool_calls": false, "seed": -3,
            "reasoning_effort": "minimal"}))
        .unwrap();
        assert_eq!(chat.parallel_tool_calls, Some(false));
        assert_eq!(chat.seed, Some(-3));
        assert_eq!(chat.reasoning_effort.as_deref(), Some("minimal"));
        let responses = read(json!({"parallel_tool_calls": true,
            "reasoning": {"effort": "high", "summary": "auto"}}))
        .unwrap();
        assert_eq!(responses.parallel_tool_calls, Some(true));
        assert_eq!(responses.reasoning_effort.as_deref(), Some("high"));
        let any =
            read(json!({"tool_choice": {"type": "auto", "disable_parallel_tool_use": false}}));
        assert_eq!(any.unwrap().parallel_tool_calls, Some(true));
        assert_eq!(
            read(json!({"tool_choice": "auto"}))
                .unwrap()
                .parallel_tool_calls,
            None
        );
        let responses = read(
            json!({"max_output_tokens": 90, "tool_choice": {"type": "function", "name": "b"}}),
        )
        .unwrap();
        assert_eq!(responses.max_tokens, Some(90));
        assert_eq!(responses.tool_choice, Some(ToolChoice::Tool("b".into())));
        assert_eq!(
            read(json!({"tool_choice": "none"})).unwrap().tool_choice,
            Some(ToolChoice::None)
        );
        assert_eq!(
            read(json!({"temperature": null, "stop": null, "response_format": {"type": "text"}}))
                .unwrap(),
            ModelSettings::default()
        );
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let expected = Some(OutputFormat::JsonSchema {
            name: "count".into(),
            schema: schema.clone(),
            strict: Some(true),
        });
        let chat = json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "count", "schema": schema, "strict": true}}});
        assert_eq!(read(chat).unwrap().format, expected);
        let responses = json!({"text": {"verbosity": "low", "format": {"type": "json_schema",
            "name": "count", "schema": schema, "strict": true}}});
        assert_eq!(read(responses).unwrap().format, expected);
        let messages = json!({"output_config": {"effort": "low",
            "format": {"type": "json_schema", "schema": schema}}});
        assert_eq!(
            read(messages).unwrap().format,
            Some(OutputFormat::JsonSchema {
                name: "output".into(),
                schema: schema.clone(),
                strict: None,
            })
        );
        let object = json!({"response_format": {"type": "json_object"}});
        assert_eq!(read(object).unwrap().format, Some(OutputFormat::JsonObject));
        assert_eq!(
            read(json!({"text": {"verbosity": "low"}})).unwrap().format,
            None
        );
    }

    #[test]
    fn a_value_that_is_no_setting_is_refused_naming_its_field() {
        for (body, field) in [
            (json!({"temperature": "hot"}), "temperature:"),
            (json!({"top_p": -1}), "top_p:"),
            (json!({"top_p": 7}), "top_p:"),
            (json!({"temperature": 1e39}), "temperature:"),
            (json!({"text": "x"}), "text:"),
            (json!({"output_config": [1]}), "output_config:"),
            (
                json!({"max_completion_tokens": 0}),
                "max_completion_tokens:",
            ),
            (json!({"max_output_tokens": 1.5}), "max_output_tokens:"),
            (json!({"stop": 3}), "stop:"),
            (json!({"stop_sequences": ["a", 1]}), "stop_sequences[1]:"),
            (
                json!({"tool_choice": {"type": "allowed_tools"}}),
                "tool_choice:",
            ),
            (json!({"tool_choice": {"type": "tool"}}), "tool_choice:"),
            (
                json!({"tool_choice": {"type": "any", "disable_parallel_tool_use": "yes"}}),
                "tool_choice.disable_parallel_tool_use:",
            ),
            (json!({"parallel_tool_calls": 1}), "parallel_tool_calls:"),
            (json!({"seed": 1.5}), "seed:"),
            (json!({"seed": "7"}), "seed:"),
            (json!({"reasoning_effort": 3}), "reasoning_effort:"),
            (json!({"reasoning_effort": ""}), "reasoning_effort:"),
            (json!({"reasoning": {"effort": true}}), "reasoning.effort:"),
            (json!({"reasoning": "high"}), "reasoning:"),
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format:",
            ),
            (
                json!({"text": {"format": {"type": "json_schema", "name": "n"}}}),
                "text.format:",
            ),
            (
                json!({"output_config": {"format": {"type": "json_schema", "schema": "x"}}}),
                "output_config.format:",
            ),
        ] {
            let e = read(body.clone()).unwrap_err();
            assert!(e.starts_with(field), "{body}: {e}");
        }
    }
}
