//! Secret references and redaction.
//!
//! Configuration names secrets (`secret:crm_token`); their values are resolved only where they are
//! used (a tool's environment, a provider's key). Anything rein records or shows passes through a
//! [`Redactor`] that replaces every known secret value with `[secret:name]`, so a tool that prints
//! its credentials, or a provider that echoes a key in an error, cannot leak it into the model's
//! context, an event, a log or a trace.

use serde_json::Value;

/// The prefix that marks a value as a reference to a secret.
pub const SECRET_PREFIX: &str = "secret:";

/// The secret a value refers to, if it is a reference (`secret:NAME`).
pub fn secret_ref(value: &str) -> Option<&str> {
    value.strip_prefix(SECRET_PREFIX)
}

/// Whether a secret name is well formed: letters, digits, `_`, `-`, `.`.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Replaces known secret values in text and JSON.
#[derive(Clone, Default)]
pub struct Redactor {
    /// (name, value), longest value first so a secret containing another is replaced whole.
    secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.secrets.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Redactor {
    /// A redactor for these (name, value) pairs. Values shorter than four bytes are not redacted
    /// (they would match ordinary text everywhere), so secrets must be longer than that.
    pub fn new(secrets: impl IntoIterator<Item = (String, String)>) -> Redactor {
        let mut secrets: Vec<(String, String)> =
            secrets.into_iter().filter(|(_, v)| v.len() >= 4).collect();
        secrets.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        Redactor { secrets }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The text with every secret value replaced by `[secret:name]`.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.secrets {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("[{SECRET_PREFIX}{name}]"));
            }
        }
        out
    }

    /// Redacts every string (and object key) in a JSON value, in place.
    pub fn json(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => {
                if self.secrets.iter().any(|(_, v)| s.contains(v.as_str())) {
                    *s = self.text(s);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            Value::Object(map) => {
                let keys: Vec<String> = map
                    .keys()
                    .filter(|k| self.secrets.iter().any(|(_, v)| k.contains(v.as_str())))
                    .cloned()
                    .collect();
                for key in keys {
                    if let Some(v) = map.remove(&key) {
                        map.insert(self.text(&key), v);
                    }
                }
                map.values_mut().for_each(|v| self.json(v));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_are_replaced_everywhere() {
        let r = Redactor::new([
            ("token".to_string(), "s3cr3t-value".to_string()),
            ("long".to_string(), "s3cr3t-value-longer".to_string()),
            ("tiny".to_string(), "ab".to_string()),
        ]);
        assert_eq!(
            r.text("key=s3cr3t-value-longer and s3cr3t-value; ab"),
            "key=[secret:long] and [secret:token]; ab"
        );
        let mut v = json!({"env": {"TOKEN": "s3cr3t-value"}, "list": ["x s3cr3t-value y", 3], "s3cr3t-value": true});
        r.json(&mut v);
        assert_eq!(
            v,
            json!({"env": {"TOKEN": "[secret:token]"}, "list": ["x [secret:token] y", 3], "[secret:token]": true})
        );
        assert_eq!(secret_ref("secret:crm_token"), Some("crm_token"));
        assert_eq!(secret_ref("plain"), None);
        assert!(
            valid_secret_name("crm_token")
                && !valid_secret_name("bad name")
                && !valid_secret_name("")
        );
    }
}
