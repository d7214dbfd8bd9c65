//! The Cedar schema rein publishes for an agent, and how tool arguments become Cedar values.
//!
//! A tool's JSON Schema maps to a Cedar record: `string` to `String`, `integer` to `Long`,
//! `number` to `decimal` (four decimal places, so compare with `.greaterThan(decimal("100.0"))`),
//! `boolean` to `Bool`, `array` to `Set`, `object` to a record. Properties the schema lists under
//! `required` are required attributes; others are optional (test them with `has`). A property
//! whose schema has no single one of these types is left out, so policies cannot refer to it.

use cedar_policy::RestrictedExpression;
use serde_json::{Value, json};

/// What the gate needs to know about a tool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolFacts {
    /// The tool's name (its action and resource id).
    pub name: String,
    /// JSON Schema of its arguments.
    pub args_schema: Value,
    /// What its output is.
    pub labels: Vec<String>,
    /// Whether it sends data outside.
    pub sink: bool,
    /// `low`, `medium` or `high`.
    pub risk: String,
    /// Whether repeating it is safe.
    pub idempotent: bool,
    /// The tool groups it belongs to.
    pub groups: Vec<String>,
}

/// A Cedar type for an argument.
#[derive(Debug, Clone, PartialEq)]
pub enum CedarType {
    /// `String`.
    String,
    /// `Long`.
    Long,
    /// The `decimal` extension type.
    Decimal,
    /// `Bool`.
    Bool,
    /// `Set<T>`.
    Set(Box<CedarType>),
    /// A record: (name, type, required).
    Record(Vec<(String, CedarType, bool)>),
}

/// The Cedar type of a JSON Schema, if it has one.
pub fn cedar_type(schema: &Value) -> Option<CedarType> {
    match schema.get("type")?.as_str()? {
        "string" => Some(CedarType::String),
        "integer" => Some(CedarType::Long),
        "number" => Some(CedarType::Decimal),
        "boolean" => Some(CedarType::Bool),
        "array" => cedar_type(schema.get("items")?).map(|t| CedarType::Set(Box::new(t))),
        "object" => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let fields = schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|props| {
                    props
                        .iter()
                        .filter_map(|(name, s)| {
                            cedar_type(s)
                                .map(|t| (name.clone(), t, required.contains(&name.as_str())))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(CedarType::Record(fields))
        }
        _ => None,
    }
}

/// The name of Cedar's `decimal` extension function, parsed once: `RestrictedExpression::new_decimal`
/// parses it again on every call, which was the largest single cost of a decision.
static DECIMAL: std::sync::LazyLock<Option<cedar_policy_core::ast::Name>> =
    std::sync::LazyLock::new(|| {
        "decimal"
            .parse()
            .ok()
            .map(cedar_policy_core::ast::Name::unqualified_name)
    });

/// `decimal("<text>")` as a restricted expression.
pub(crate) fn decimal(text: String) -> RestrictedExpression {
    match DECIMAL.as_ref() {
        Some(name) => {
            RestrictedExpression::from(cedar_policy_core::ast::RestrictedExpr::call_extension_fn(
                name.clone(),
                [cedar_policy_core::ast::RestrictedExpr::val(text)],
            ))
        }
        None => RestrictedExpression::new_decimal(text),
    }
}

/// A JSON value as a Cedar expression of type `ty`, or `None` if it does not fit.
pub(crate) fn cedar_expr(ty: &CedarType, value: &Value) -> Option<RestrictedExpression> {
    Some(match ty {
        CedarType::String => RestrictedExpression::new_string(value.as_str()?.to_owned()),
        CedarType::Long => RestrictedExpression::new_long(value.as_i64()?),
        CedarType::Decimal => {
            let n = value.as_f64()?;
            // Cedar decimals hold four places and about 9.2e14 in magnitude.
            if !(n.is_finite() && n.abs() < 9.0e14) {
                return None;
            }
            decimal(format!("{n:.4}"))
        }
        CedarType::Bool => RestrictedExpression::new_bool(value.as_bool()?),
        CedarType::Set(item) => RestrictedExpression::new_set(
            value
                .as_array()?
                .iter()
                .map(|v| cedar_expr(item, v))
                .collect::<Option<Vec<_>>>()?,
        ),
        CedarType::Record(fields) => {
            let object = value.as_object()?;
            let mut out = Vec::with_capacity(fields.len());
            for (name, ty, required) in fields {
                match object.get(name) {
                    Some(v) => out.push((name.clone(), cedar_expr(ty, v)?)),
                    None if *required => return None,
                    None => {}
                }
            }
            RestrictedExpression::new_record(out).ok()?
        }
    })
}

fn render(ty: &CedarType, indent: usize) -> String {
    match ty {
        CedarType::String => "String".into(),
        CedarType::Long => "Long".into(),
        CedarType::Decimal => "__cedar::decimal".into(),
        CedarType::Bool => "Bool".into(),
        CedarType::Set(item) => format!("Set<{}>", render(item, indent)),
        CedarType::Record(fields) if fields.is_empty() => "{}".into(),
        CedarType::Record(fields) => {
            let pad = "  ".repeat(indent + 1);
            let inner: Vec<String> = fields
                .iter()
                .map(|(name, ty, required)| {
                    format!(
                        "{pad}{}{}: {}",
                        json!(name),
                        if *required { "" } else { "?" },
                        render(ty, indent + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{}}}", inner.join(",\n"), "  ".repeat(indent))
        }
    }
}

const CONTEXT_FIELDS: &str = "\"user\": String, \"tenant\": String, \"task\": String, \"labels\": Set<String>, \"budget_percent\": Long, \"approval\": Approval";

/// The top-level arguments of a tool's schema, by kind: all of them (for `context.from`), the
/// strings and lists of strings (for `context.facts`), and the numbers (for
/// `context.counters.sums`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ArgKinds {
    pub(crate) all: Vec<String>,
    pub(crate) strings: Vec<String>,
    pub(crate) numbers: Vec<String>,
}

pub(crate) fn arg_kinds(schema: &Value) -> ArgKinds {
    let mut kinds = ArgKinds::default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return kinds;
    };
    for (name, prop) in props {
        kinds.all.push(name.clone());
        match cedar_type(prop) {
            Some(CedarType::String) => kinds.strings.push(name.clone()),
            Some(CedarType::Set(item)) if *item == CedarType::String => {
                kinds.strings.push(name.clone())
            }
            Some(CedarType::Long | CedarType::Decimal) => kinds.numbers.push(name.clone()),
            _ => {}
        }
    }
    kinds
}

/// The types every agent's schema declares beside its entities.
const COMMON_TYPES: &str = "type Approval = {\n  \"granted\": Bool,\n  \"by\": String\n};\n\
type ArgFacts = {\n  \"lower\": String,\n  \"joined\": String,\n  \"length\": Long,\n  \"first\": String,\n  \"urls\": Set<String>,\n  \"hosts\": Set<String>,\n  \"carries_data\": Bool,\n  \"emails\": Set<String>,\n  \"email_domains\": Set<String>,\n  \"path\": String,\n  \"in_workspace\": Bool\n};\n\
type Grants = {\n  \"fixed\": Bool,\n  \"covered\": Bool,\n  \"tools\": Set<String>\n};\n\
type AnswerFacts = {\n  \"text\": String,\n  \"lower\": String,\n  \"urls\": Set<String>,\n  \"hosts\": Set<String>,\n  \"images\": Set<String>,\n  \"image_hosts\": Set<String>,\n  \"carries_data\": Bool,\n  \"from\": Set<String>\n};\n";

/// The Cedar schema (Cedar format) for an agent with these tools, models, delegates and data.
pub fn schema_text(setup: &crate::GateSetup) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "// The Cedar schema rein validates the policies of agent {} against.\n\
         // Generated by `rein schema policy`; every tool is an action in the \"call_tool\" group.\n\
         //\n\
         // A tool call's context has, beside the run's facts (user, tenant, task, labels,\n\
         // budget_percent, approval) and its arguments (`args`):\n\
         //   from.<arg>      where the argument's values came from: \"task\", \"operator\",\n\
         //                   \"tool:<name>\", the labels of the values it matched (\"untrusted\"...),\n\
         //                   or \"model\" when no source holds them\n\
         //   facts.<arg>     for a string (or list of strings) argument: lower, joined (a list's\n\
         //                   items in order), length, first, urls, hosts, carries_data (a URL\n\
         //                   holds data the run read), emails, email_domains, path (resolved\n\
         //                   against the workspace: relative inside it, absolute outside),\n\
         //                   in_workspace\n\
         //   counters        calls (this tool's, so far), run_calls, cost_micros, sums.<arg>\n\
         //                   (the sum of a numeric argument over this tool's calls)\n\
         //   grants          fixed, covered (a grant covers this call), tools\n\
         //   data.<name>     the operator's data and trusted tools' outputs, as sets of strings\n\
         // The run's answer is judged as the action \"respond\" on Answer::\"final\", with\n\
         // context.answer (text, lower, urls, hosts, images, image_hosts, carries_data, from);\n\
         // answers are returned unless a forbid or an @ask permit matches.\n\n",
        json!(setup.agent)
    ));
    out.push_str("entity Agent in [Agent];\nentity ToolGroup;\n");
    out.push_str("entity Tool in [ToolGroup] {\n  \"sink\": Bool,\n  \"risk\": String,\n  \"idempotent\": Bool,\n  \"labels\": Set<String>\n};\n");
    out.push_str("entity Model;\nentity Answer;\n");
    out.push_str(COMMON_TYPES);
    let data_fields: Vec<String> = setup
        .data
        .iter()
        .map(|d| format!("{}: Set<String>", json!(d)))
        .collect();
    out.push_str(&format!(
        "type Data = {{ {} }};\n\n",
        data_fields.join(", ")
    ));
    out.push_str("action \"call_tool\";\n");
    out.push_str(&format!("action \"use_model\" appliesTo {{\n  principal: [Agent],\n  resource: [Model],\n  context: {{ {CONTEXT_FIELDS} }}\n}};\n"));
    out.push_str(&format!(
        "action \"delegate\" appliesTo {{\n  principal: [Agent],\n  resource: [Agent],\n  context: {{ {CONTEXT_FIELDS}, \"args\": {{ \"task\": String }} }}\n}};\n"
    ));
    out.push_str(&format!(
        "action \"respond\" appliesTo {{\n  principal: [Agent],\n  resource: [Answer],\n  context: {{ {CONTEXT_FIELDS}, \"answer\": AnswerFacts, \"grants\": Grants, \"data\": Data }}\n}};\n"
    ));
    for tool in &setup.tools {
        let args = cedar_type(&tool.args_schema).unwrap_or(CedarType::Record(vec![]));
        let kinds = arg_kinds(&tool.args_schema);
        let from: Vec<String> = kinds
            .all
            .iter()
            .map(|a| format!("{}: Set<String>", json!(a)))
            .collect();
        let facts: Vec<String> = kinds
            .strings
            .iter()
            .map(|a| format!("{}?: ArgFacts", json!(a)))
            .collect();
        let sums: Vec<String> = kinds
            .numbers
            .iter()
            .map(|a| format!("{}: __cedar::decimal", json!(a)))
            .collect();
        out.push_str(&format!(
            "\naction {} in [\"call_tool\"] appliesTo {{\n  principal: [Agent],\n  resource: [Tool],\n  context: {{\n    {CONTEXT_FIELDS},\n    \"args\": {},\n    \"from\": {{ {} }},\n    \"facts\": {{ {} }},\n    \"counters\": {{ \"calls\": Long, \"run_calls\": Long, \"cost_micros\": Long, \"sums\": {{ {} }} }},\n    \"grants\": Grants,\n    \"data\": Data\n  }}\n}};\n",
            json!(tool.name),
            render(&args, 2),
            from.join(", "),
            facts.join(", "),
            sums.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schema_types_map_to_cedar_types_and_values() {
        let schema = json!({
            "type": "object",
            "required": ["amount", "to"],
            "properties": {
                "amount": {"type": "number"},
                "count": {"type": "integer"},
                "to": {"type": "string"},
                "urgent": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "anything": {},
                "either": {"type": ["string", "null"]},
            }
        });
        let ty = cedar_type(&schema).unwrap();
        let CedarType::Record(fields) = &ty else {
            panic!()
        };
        let mut names: Vec<&str> = fields.iter().map(|f| f.0.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec!["amount", "count", "tags", "to", "urgent"],
            "untyped properties are left out"
        );
        assert!(
            fields
                .iter()
                .any(|f| f.0 == "amount" && f.1 == CedarType::Decimal && f.2)
        );
        assert!(
            fields
                .iter()
                .any(|f| f.0 == "count" && f.1 == CedarType::Long && !f.2)
        );
        let value = format!(
            "{:?}",
            cedar_expr(
                &ty,
                &json!({"amount": 42.5, "to": "a@b.c", "tags": ["x"], "anything": [1], "count": 3})
            )
            .unwrap()
        );
        assert!(
            value.contains("42.5000")
                && value.contains("decimal")
                && value.contains("tags")
                && !value.contains("anything"),
            "{value}"
        );
        assert!(
            cedar_expr(&ty, &json!({"to": "x"})).is_none(),
            "a required field is missing"
        );
        assert!(
            cedar_expr(&ty, &json!({"amount": 1e300, "to": "x"})).is_none(),
            "out of a decimal's range"
        );
    }
}
