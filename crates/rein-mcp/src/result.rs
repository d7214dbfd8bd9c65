//! An MCP tool result as the model reads it: text joined, other content summarised (never raw
//! base64 into the context), structured content kept, and the whole cut to a byte budget with a
//! marker saying so.

use rein_tools::ToolError;
use rmcp::model::CallToolResult;
use serde_json::{Value, json};

/// The result as a JSON value of at most about `cap` bytes, and the full size if it was cut. A
/// result the server flags as an error becomes a tool error carrying its text.
pub fn cut_result(result: CallToolResult, cap: usize) -> Result<(Value, Option<usize>), ToolError> {
    let mut text = String::new();
    let mut other = Vec::new();
    for block in &result.content {
        let value = serde_json::to_value(block).unwrap_or(Value::Null);
        match value.get("type").and_then(Value::as_str) {
            Some("text") => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(
                    value
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            Some(kind) => other.push(summary(kind, &value)),
            None => other.push(json!({"type": "unknown"})),
        }
    }
    if result.is_error == Some(true) {
        let (text, _) = cut_text(&text, cap);
        return Err(ToolError::Failed(if text.is_empty() {
            "the tool reported an error without a message".into()
        } else {
            text
        }));
    }
    let structured = result.structured_content;
    let structured_len = structured
        .as_ref()
        .map(|s| s.to_string().len())
        .unwrap_or(0);
    let total = text.len() + structured_len;
    let mut value = serde_json::Map::new();
    let mut cut = None;
    if total <= cap {
        value.insert("text".into(), Value::String(text));
        if let Some(s) = structured {
            value.insert("structured".into(), s);
        }
    } else {
        cut = Some(total);
        // The text is what the model reads; structured content that does not fit is dropped.
        let (kept, _) = cut_text(&text, cap);
        value.insert("text".into(), Value::String(kept));
        if structured.is_some() {
            value.insert(
                "structured".into(),
                Value::String(format!(
                    "[rein: {structured_len} bytes of structured content left out]"
                )),
            );
        }
    }
    if !other.is_empty() {
        value.insert("other_content".into(), Value::Array(other));
    }
    Ok((Value::Object(value), cut))
}

/// The first `cap` bytes of `text` (on a character boundary), with a marker if anything was cut.
fn cut_text(text: &str, cap: usize) -> (String, bool) {
    if text.len() <= cap {
        return (text.to_owned(), false);
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (
        format!(
            "{}\n[rein: result cut: {} of {} bytes shown]",
            &text[..end],
            end,
            text.len()
        ),
        true,
    )
}

/// A non-text content block, described without its payload.
fn summary(kind: &str, block: &Value) -> Value {
    let mut out = json!({"type": kind});
    for key in ["mimeType", "uri", "name"] {
        if let Some(v) = block
            .get(key)
            .or_else(|| block.get("resource").and_then(|r| r.get(key)))
        {
            out[key] = v.clone();
        }
    }
    if let Some(data) = block.get("data").and_then(Value::as_str) {
        out["bytes"] = json!(data.len() / 4 * 3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;

    #[test]
    fn text_is_joined_and_kept_under_the_cap() {
        let result =
            CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        let (value, cut) = cut_result(result, 100).unwrap();
        assert_eq!(value["text"], "a\nb");
        assert_eq!(cut, None);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_a_marker() {
        let long = "é".repeat(1000); // 2000 bytes
        let result = CallToolResult::success(vec![ContentBlock::text(long)]);
        let (value, cut) = cut_result(result, 301).unwrap();
        assert_eq!(cut, Some(2000));
        let text = value["text"].as_str().unwrap();
        assert!(text.starts_with(&"é".repeat(150)));
        assert!(
            text.ends_with("[rein: result cut: 300 of 2000 bytes shown]"),
            "{text}"
        );
    }

    #[test]
    fn an_error_result_is_a_tool_error_with_its_text() {
        let result = CallToolResult::error(vec![ContentBlock::text("no such file")]);
        assert_eq!(
            cut_result(result, 100).unwrap_err(),
            ToolError::Failed("no such file".into())
        );
    }

    #[test]
    fn images_are_summarised_not_passed_as_base64() {
        let result = CallToolResult::success(vec![ContentBlock::image("AAAAAAAA", "image/png")]);
        let (value, _) = cut_result(result, 1000).unwrap();
        assert_eq!(
            value["other_content"],
            json!([{"type": "image", "mimeType": "image/png", "bytes": 6}])
        );
        assert!(!value.to_string().contains("AAAAAAAA"));
    }
}
