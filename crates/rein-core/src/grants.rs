//! Grants: what a run may do, fixed before it reads untrusted data.
//!
//! A grant names a tool and, for some of its arguments, what values they may take; it may cap
//! how many calls it covers. Grants come from whoever starts the run (`--grant`, the API) or from
//! a planning model call that sees only the instructions and the task, and are recorded before
//! the first tool runs. Once untrusted data is in the run, a call that no grant covers is denied,
//! whatever the model was told by that data.
//!
//! ```json
//! {"tool": "bank.transfer", "args": {"to_iban": "DE89 3704 0044 0532 0130 00",
//!   "amount": {"max": 1250}}, "max_calls": 1}
//! ```
//!
//! An argument constraint is a value (the argument must equal it; strings compared as
//! provenance compares them: case, whitespace and percent-encoding do not matter) or a rule:
//! `{"one_of": [..]}`, `{"max": n}`, `{"min": n}`, `{"prefix": ".."}`, `{"any": true}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::provenance::normalise;

/// One grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The tool it covers.
    pub tool: String,
    /// Constraints on arguments; arguments not named are free.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Constraint>,
    /// How many calls of the tool it covers at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
}

/// What one argument may be: a value it must equal (a string, number, boolean or list; an
/// object is written `{"equals": {...}}`), or a rule object.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A rule.
    Rule(Rule),
    /// Exactly this value.
    Equals(Value),
}

impl Serialize for Constraint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Constraint::Rule(rule) => rule.serialize(s),
            // An object value is written so that it reads back as a value, not as a rule.
            Constraint::Equals(v @ Value::Object(_)) => {
                serde_json::json!({ "equals": v }).serialize(s)
            }
            Constraint::Equals(v) => v.serialize(s),
        }
    }
}

const RULE_KEYS: [&str; 5] = ["one_of", "max", "min", "prefix", "any"];

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Constraint, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Object(mut map) => {
                if map.len() == 1 && map.contains_key("equals") {
                    return Ok(Constraint::Equals(
                        map.remove("equals").unwrap_or(Value::Null),
                    ));
                }
                if let Some(bad) = map.keys().find(|k| !RULE_KEYS.contains(&k.as_str())) {
                    return Err(D::Error::custom(format!(
                        "`{bad}` is not a rule; a rule is one of {} (an object value is written {{\"equals\": {{...}}}})",
                        RULE_KEYS.join(", ")
                    )));
                }
                serde_json::from_value(Value::Object(map))
                    .map(Constraint::Rule)
                    .map_err(D::Error::custom)
            }
            other => Ok(Constraint::Equals(other)),
        }
    }
}

/// A rule on an argument's value; every field given must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// One of these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// A number at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// A number at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// A string starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
}

/// Whether two values are the same for a grant: numbers by value, strings normalised.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => normalise(x) == normalise(y),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            s.trim().parse::<f64>().ok() == n.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

impl Constraint {
    /// Whether `value` (absent: `None`) satisfies the constraint.
    pub fn admits(&self, value: Option<&Value>) -> bool {
        match self {
            Constraint::Equals(expected) => value.is_some_and(|v| same(expected, v)),
            Constraint::Rule(rule) => {
                if rule.any == Some(true) {
                    return true;
                }
                let Some(v) = value else { return false };
                rule.one_of
                    .as_ref()
                    .is_none_or(|list| list.iter().any(|o| same(o, v)))
                    && rule.max.is_none_or(|m| number(v).is_some_and(|n| n <= m))
                    && rule.min.is_none_or(|m| number(v).is_some_and(|n| n >= m))
                    && rule.prefix.as_ref().is_none_or(|p| {
                        v.as_str()
                            .is_some_and(|s| normalise(s).starts_with(&normalise(p)))
                    })
            }
        }
    }
}

impl Grant {
    /// Whether the grant covers a call of `tool` with `args`, given how many calls of the tool
    /// the run has made already.
    pub fn covers(&self, tool: &str, args: &Value, calls_so_far: u32) -> bool {
        self.tool == tool
            && self.max_calls.is_none_or(|m| calls_so_far < m)
            && self
                .args
                .iter()
                .all(|(name, constraint)| constraint.admits(args.get(name)))
    }
}

/// The first grant that covers a call, if any.
pub fn covering(grants: &[Grant], tool: &str, args: &Value, calls_so_far: u32) -> Option<usize> {
    grants
        .iter()
        .position(|g| g.covers(tool, args, calls_so_far))
}

/// Reads grants from JSON: one grant, or a list of them, or `{"grants": [...]}` (what a planner
/// answers; text around the JSON is ignored). Errors say what is wrong.
pub fn parse(text: &str) -> Result<Vec<Grant>, String> {
    let start = text
        .find(['{', '['])
        .ok_or("no JSON object or list in it")?;
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    let value = stream
        .next()
        .ok_or("no JSON in it")?
        .map_err(|e| format!("not JSON: {e}"))?;
    let list = match value {
        Value::Object(mut map) if map.contains_key("grants") => {
            map.remove("grants").unwrap_or(Value::Null)
        }
        one @ Value::Object(_) => Value::Array(vec![one]),
        list => list,
    };
    serde_json::from_value(list).map_err(|e| format!("not a list of grants: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grants_cover_the_calls_they_name_and_nothing_else() {
        let grants = parse(
            r#"The plan: {"grants": [
                {"tool": "bank.transfer", "args": {"to": "DE89 3704 0044", "amount": {"max": 100}}, "max_calls": 1},
                {"tool": "files.read", "args": {"path": {"prefix": "/reports/"}}},
                {"tool": "mail.send", "args": {"to": {"one_of": ["ann@example.com", "bob@example.com"]}}}
            ]} That is all."#,
        )
        .unwrap();
        let t = |tool: &str, args: Value, n: u32| covering(&grants, tool, &args, n);
        assert_eq!(
            t(
                "bank.transfer",
                json!({"to": "de8937040044", "amount": 99.5}),
                0
            ),
            Some(0)
        );
        assert_eq!(
            t(
                "bank.transfer",
                json!({"to": "DE89 3704 0044", "amount": "100"}),
                0
            ),
            Some(0)
        );
        assert_eq!(
            t(
                "bank.transfer",
                json!({"to": "DE89 3704 0044", "amount": 100.01}),
                0
            ),
            None
        );
        assert_eq!(
            t("bank.transfer", json!({"to": "GB33 BUKB", "amount": 5}), 0),
            None
        );
        assert_eq!(
            t(
                "bank.transfer",
                json!({"to": "DE89 3704 0044", "amount": 5}),
                1
            ),
            None,
            "max_calls"
        );
        assert_eq!(
            t("bank.transfer", json!({"amount": 5}), 0),
            None,
            "a constrained argument left out"
        );
        assert_eq!(
            t("files.read", json!({"path": "/Reports/q1.txt"}), 7),
            Some(1)
        );
        assert_eq!(t("files.read", json!({"path": "/etc/passwd"}), 0), None);
        assert_eq!(
            t(
                "mail.send",
                json!({"to": "BOB@example.com", "body": "x"}),
                0
            ),
            Some(2)
        );
        assert_eq!(t("mail.send", json!({"to": "eve@evil.test"}), 0), None);
        assert_eq!(t("shell.run", json!({}), 0), None);
        assert!(parse("no json").is_err());
        assert!(parse(r#"[{"tool": "x", "bogus": 1}]"#).is_err());
        let typo = parse(r#"[{"tool": "x", "args": {"amount": {"most": 5}}}]"#).unwrap_err();
        assert!(typo.contains("`most` is not a rule"), "{typo}");
        let object = parse(r#"[{"tool": "x", "args": {"opts": {"equals": {"a": 1}}}}]"#).unwrap();
        assert_eq!(
            covering(&object, "x", &json!({"opts": {"a": 1}}), 0),
            Some(0)
        );
        // Grants are recorded in the log: they read back as they were.
        for g in [object, grants] {
            let text = serde_json::to_string(&g).unwrap();
            assert_eq!(
                serde_json::from_str::<Vec<Grant>>(&text).unwrap(),
                g,
                "{text}"
            );
        }
        assert_eq!(parse(r#"{"tool": "x"}"#).unwrap().len(), 1);
    }
}
