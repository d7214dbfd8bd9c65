//! Gate tests: a table of verdicts over many requests (forbid over permit, default deny, labels,
//! argument conditions, approvals), and clear, line-numbered errors for bad policies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use rein_core::Verdict;
use rein_policy::{Gate, GateSetup, PolicySource, RequestFacts, ToolFacts};
use serde_json::{Value, json};

fn tool(
    name: &str,
    args: Value,
    sink: bool,
    risk: &str,
    labels: &[&str],
    groups: &[&str],
) -> ToolFacts {
    ToolFacts {
        name: name.into(),
        args_schema: args,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        sink,
        risk: risk.into(),
        idempotent: false,
        groups: groups.iter().map(|s| s.to_string()).collect(),
    }
}

fn setup() -> GateSetup {
    let s = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    GateSetup {
        agent: "support-desk".into(),
        parents: vec![],
        tools: vec![
            tool(
                "orders.lookup",
                s(json!({"order_id": {"type": "string"}}), &["order_id"]),
                false,
                "low",
                &[],
                &["read_only"],
            ),
            tool(
                "refunds.issue",
                s(
                    json!({"order_id": {"type": "string"}, "amount": {"type": "number"}}),
                    &["order_id", "amount"],
                ),
                false,
                "medium",
                &[],
                &["payments"],
            ),
            tool(
                "email.send",
                s(
                    json!({"to": {"type": "string"}, "body": {"type": "string"}}),
                    &["to"],
                ),
                true,
                "medium",
                &[],
                &[],
            ),
            tool(
                "web.get",
                s(json!({"url": {"type": "string"}}), &["url"]),
                false,
                "low",
                &["untrusted"],
                &["read_only"],
            ),
            tool(
                "crm.export",
                s(json!({}), &[]),
                true,
                "low",
                &["confidential"],
                &[],
            ),
            tool(
                "customers.delete",
                s(json!({"id": {"type": "string"}}), &["id"]),
                false,
                "low",
                &[],
                &["admin"],
            ),
            tool(
                "payments.wire",
                s(json!({"amount": {"type": "integer"}}), &["amount"]),
                true,
                "high",
                &[],
                &["payments"],
            ),
        ],
        models: vec!["support-script".into(), "small".into()],
        delegates: vec!["researcher".into()],
        data: vec!["payees".into()],
    }
}

const POLICIES: &str = r#"
@id("use-models")
permit(principal, action == Action::"use_model", resource == Model::"support-script");

@id("tools-by-default")
permit(principal, action in Action::"call_tool", resource)
when { resource.risk != "high" };

@id("refund-limit")
@ask("refunds above 100.00 need a supervisor")
permit(principal, action == Action::"refunds.issue", resource)
when { context.args.amount.greaterThan(decimal("100.0")) };
// example: ask refunds.issue {"order_id": "A-1", "amount": 250.0}
// example: allow refunds.issue {"order_id": "A-1", "amount": 20.0}

@id("big-refunds-need-the-cfo")
@reason("refunds above 1000.00 need the CFO's approval")
forbid(principal, action == Action::"refunds.issue", resource)
when { context.args.amount.greaterThan(decimal("1000.0")) && context.approval.by != "cfo" };
// example: ask refunds.issue {"order_id": "A-1", "amount": 5000.0} approved-by: cfo

@id("external-email-after-untrusted")
@ask("email outside example.com after reading untrusted content")
permit(principal, action == Action::"email.send", resource)
when { context.labels.contains("untrusted") && !(context.args.to like "*@example.com") };
// example: ask email.send {"to": "x@evil.test"} labels: untrusted

@id("no-confidential-to-sinks")
@reason("confidential data never goes to a sink")
forbid(principal, action in Action::"call_tool", resource)
when { resource.sink && context.labels.contains("confidential") };

@id("never-delete-customers")
forbid(principal, action in Action::"call_tool", resource in ToolGroup::"admin");
// example: deny customers.delete {"id": "c1"}

@id("delegate-research")
permit(principal, action == Action::"delegate", resource == Agent::"researcher");
"#;

fn gate_with(text: &str) -> Result<Gate, rein_policy::PolicyErrors> {
    Gate::from_sources(
        &[PolicySource {
            file: PathBuf::from("policies/main.cedar"),
            text: text.into(),
        }],
        &setup(),
    )
}

fn facts(labels: &[&str], approved_by: Option<&str>) -> RequestFacts {
    RequestFacts {
        budget_percent: 0,
        user: "jane".into(),
        tenant: "shop".into(),
        task: "help".into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        approved_by: approved_by.map(str::to_owned),
        ..RequestFacts::default()
    }
}

#[test]
fn verdicts_over_many_requests() {
    let gate = gate_with(POLICIES).unwrap();
    assert_eq!(gate.policy_count(), 8);
    // (tool, args, labels, approved by, verdict, deciding policies)
    type Case<'a> = (
        &'a str,
        Value,
        &'a [&'a str],
        Option<&'a str>,
        Verdict,
        &'a [&'a str],
    );
    let cases: Vec<Case> = vec![
        (
            "orders.lookup",
            json!({"order_id": "A-1"}),
            &[],
            None,
            Verdict::Allow,
            &["tools-by-default"],
        ),
        (
            "refunds.issue",
            json!({"order_id": "A-1", "amount": 20.0}),
            &[],
            None,
            Verdict::Allow,
            &["tools-by-default"],
        ),
        (
            "refunds.issue",
            json!({"order_id": "A-1", "amount": 100}),
            &[],
            None,
            Verdict::Allow,
            &["tools-by-default"],
        ),
        (
            "refunds.issue",
            json!({"order_id": "A-1", "amount": 100.01}),
            &[],
            None,
            Verdict::Ask,
            &["refund-limit"],
        ),
        (
            "refunds.issue",
            json!({"order_id": "A-1", "amount": 250}),
            &[],
            None,
            Verdict::Ask,
            &["refund-limit"],
        ),
        (
            "refunds.issue",
            json!({"order_id": "A-1", "amount": 5000}),
            &[],
            Some("bob"),
            Verdict::Deny,
            &["big-refunds-need-the-cfo"],
        ),
        (
            "refunds.issue",
            json!({"order_id": "A-1", "amount": 5000}),
            &[],
            Some("cfo"),
            Verdict::Ask,
            &["refund-limit"],
        ),
        (
            "email.send",
            json!({"to": "jane@example.com"}),
            &[],
            None,
            Verdict::Allow,
            &["tools-by-default"],
        ),
        (
            "email.send",
            json!({"to": "x@evil.test"}),
            &[],
            None,
            Verdict::Allow,
            &["tools-by-default"],
        ),
        (
            "email.send",
            json!({"to": "x@evil.test"}),
            &["untrusted"],
            None,
            Verdict::Ask,
            &["external-email-after-untrusted"],
        ),
        (
            "email.send",
            json!({"to": "jane@example.com"}),
            &["untrusted"],
            None,
            Verdict::Allow,
            &["tools-by-default"],
        ),
        (
            "email.send",
            json!({"to": "jane@example.com"}),
            &["confidential"],
            None,
            Verdict::Deny,
            &["no-confidential-to-sinks"],
        ),
        (
            "crm.export",
            json!({}),
            &["confidential", "untrusted"],
            None,
            Verdict::Deny,
            &["no-confidential-to-sinks"],
        ),
        (
            "crm.export",
            json!({}),
            &[],
            None,
            Verdict::Allow,
            &["tools-by-default"],
        ),
        (
            "customers.delete",
            json!({"id": "c1"}),
            &[],
            None,
            Verdict::Deny,
            &["never-delete-customers"],
        ),
        (
            "payments.wire",
            json!({"amount": 10}),
            &[],
            None,
            Verdict::Deny,
            &[],
        ),
        ("shell.exec", json!({}), &[], None, Verdict::Deny, &[]),
    ];
    for (tool, args, labels, approved, verdict, policies) in cases {
        let d = gate.judge_tool(tool, &args, &facts(labels, approved));
        assert_eq!(d.verdict, verdict, "{tool} {args} {labels:?}: {d:?}");
        assert_eq!(d.policies, policies, "{tool} {args} {labels:?}");
        assert!(!d.reasons.is_empty() || verdict == Verdict::Allow, "{d:?}");
    }
    let d = gate.judge_tool("payments.wire", &json!({"amount": 10}), &facts(&[], None));
    assert!(d.reasons[0].contains("default deny"));
    let d = gate.judge_tool(
        "refunds.issue",
        &json!({"order_id": "A-1", "amount": 250}),
        &facts(&[], None),
    );
    assert_eq!(d.reasons, vec!["refunds above 100.00 need a supervisor"]);

    assert_eq!(
        gate.judge_model("support-script", &facts(&[], None))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        gate.judge_model("small", &facts(&[], None)).verdict,
        Verdict::Deny
    );
    assert_eq!(
        gate.judge_model("not-configured", &facts(&[], None))
            .verdict,
        Verdict::Deny
    );
    assert_eq!(
        gate.judge_delegate("researcher", "find x", &facts(&[], None))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        gate.judge_delegate("stranger", "find x", &facts(&[], None))
            .verdict,
        Verdict::Deny
    );
}

#[test]
fn without_policies_everything_is_denied() {
    let gate = gate_with("// nothing is permitted\n").unwrap();
    for tool in ["orders.lookup", "email.send"] {
        assert_eq!(
            gate.judge_tool(
                tool,
                &json!({"order_id": "A", "to": "x"}),
                &facts(&[], None)
            )
            .verdict,
            Verdict::Deny
        );
    }
    assert_eq!(
        gate.judge_model("support-script", &facts(&[], None))
            .verdict,
        Verdict::Deny
    );
}

#[test]
fn a_forbid_that_cannot_be_evaluated_denies() {
    // `has` is not checked, so the optional attribute errors at run time for requests without it.
    let text = r#"
permit(principal, action in Action::"call_tool", resource);
forbid(principal, action == Action::"orders.lookup", resource) when { context.args.order_id like "X*" };
"#;
    let gate = gate_with(text).unwrap();
    assert_eq!(
        gate.judge_tool(
            "orders.lookup",
            &json!({"order_id": "A-1"}),
            &facts(&[], None)
        )
        .verdict,
        Verdict::Allow
    );
    assert_eq!(
        gate.judge_tool(
            "orders.lookup",
            &json!({"order_id": "X-1"}),
            &facts(&[], None)
        )
        .verdict,
        Verdict::Deny
    );
}

#[test]
fn bad_policies_get_line_numbered_errors() {
    let cases: Vec<(&str, &str)> = vec![
        ("permit(principal, action resource);\n", "main.cedar:1:"),
        (
            "\n\npermit(principal, action == Action::\"call_tool\", resource) when { context.args.amount > 1 };\n",
            "main.cedar:3:",
        ),
        (
            "\npermit(principal, action in Action::\"call_tool\", resource == Tool::\"refund\");\n",
            "main.cedar:2:",
        ),
        (
            "\npermit(principal, action == Action::\"nuke.everything\", resource);\n",
            "nuke.everything",
        ),
        (
            "@id(\"a\")\npermit(principal, action, resource);\n@id(\"a\")\nforbid(principal, action, resource);\n",
            "two policies are named `a`",
        ),
        (
            "permit(principal, action in Action::\"call_tool\", resource);\n\n// example: deny orders.lookup {\"order_id\": \"A-1\"}\n",
            "main.cedar:3:1: example expects deny but the policies say allow",
        ),
        (
            "permit(principal, action in Action::\"call_tool\", resource);\n// example: maybe orders.lookup\n",
            "main.cedar:2:1: bad example: `maybe` is not a verdict",
        ),
        (
            "@ask(\"why\")\nforbid(principal, action, resource);\n",
            "@ask applies to permit policies only",
        ),
    ];
    for (text, needle) in cases {
        let Err(err) = gate_with(text) else {
            panic!("{text:?} loaded without an error")
        };
        let err = err.to_string();
        assert!(
            err.contains(needle),
            "{text:?}\ngave: {err}\nwanted: {needle}"
        );
    }
    let err = gate_with(
        "\npermit(principal, action in Action::\"call_tool\", resource == Tool::\"refund\");\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("names Tool::\"refund\", which this agent does not have"),
        "{err}"
    );
}

#[test]
fn policies_load_from_the_agent_folder_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let err = Gate::load_dir(dir.path(), &setup())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("policies") && err.contains("denies everything by default"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/a.cedar"),
        "permit(principal, action in Action::\"call_tool\", resource);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/b.cedar"),
        "forbid(principal, action == Action::\"email.send\", resource);",
    )
    .unwrap();
    std::fs::write(dir.path().join("policies/notes.txt"), "ignored").unwrap();
    let gate = Gate::load_dir(dir.path(), &setup()).unwrap();
    let d = gate.judge_tool("email.send", &json!({"to": "x"}), &facts(&[], None));
    assert_eq!(
        (d.verdict, d.policies),
        (Verdict::Deny, vec!["b#1".to_string()])
    );
    assert!(
        gate.schema_text()
            .contains("action \"refunds.issue\" in [\"call_tool\"]")
    );
}

#[test]
fn provenance_facts_counters_grants_data_and_answers_reach_the_policies() {
    let text = r#"
@id("refund-orders-from-the-task")
forbid(principal, action == Action::"refunds.issue", resource)
unless { context.from.order_id.contains("task") };
// example: deny refunds.issue {"order_id": "A-1", "amount": 5.0}; from: order_id=tool:tickets.read|untrusted
// example: allow refunds.issue {"order_id": "A-1", "amount": 5.0}; from: order_id=task

@id("one-refund-and-at-most-100")
forbid(principal, action == Action::"refunds.issue", resource)
when { context.counters.calls >= 1 || context.counters.sums.amount.greaterThan(decimal("100.0")) };
// example: deny refunds.issue {"order_id": "A-1", "amount": 5.0}; from: order_id=task; calls: 1

@id("mail-to-our-domain-or-saved-contacts")
forbid(principal, action == Action::"email.send", resource)
when {
  context.facts has to &&
  !(context.facts.to.email_domains.contains("example.com") || context.data.payees.contains(context.facts.to.lower))
};
// example: deny email.send {"to": "Eve <eve@Evil.test>"}
// example: allow email.send {"to": "Ann@Example.com"}
// example: allow email.send {"to": "bob@partner.test"}; data: payees=bob@partner.test

@id("no-links-carrying-data-and-granted-after-untrusted")
forbid(principal, action in Action::"call_tool", resource)
when { context.labels.contains("untrusted") && context.grants.fixed && !context.grants.covered };
// example: deny orders.lookup {"order_id": "A-1"}; labels: untrusted; grants-fixed
// example: allow orders.lookup {"order_id": "A-1"}; labels: untrusted; granted

@id("no-images-off-site")
forbid(principal, action == Action::"respond", resource)
when { !(["shop.example.com"].containsAll(context.answer.image_hosts)) };
// example: deny respond {"text": "Done! ![x](https://evil.test/p?q=secret)"}
// example: allow respond {"text": "Done! ![x](https://shop.example.com/logo.png) see https://evil.test"}

@id("base")
permit(principal, action in Action::"call_tool", resource);
"#;
    let gate = gate_with(text).unwrap_or_else(|e| panic!("{e}"));
    // Without any policy about answers, they are returned.
    let plain = gate_with("permit(principal, action in Action::\"call_tool\", resource);").unwrap();
    let answer = rein_policy::answer_facts("hi", &Default::default());
    assert_eq!(
        plain.judge_answer(&answer, &facts(&[], None)).verdict,
        Verdict::Allow
    );
    // A path argument is resolved before the policies see it.
    let schema = rein_policy::schema_text(&setup());
    for field in [
        "\"from\"",
        "\"facts\"",
        "\"counters\"",
        "\"grants\"",
        "\"data\"",
        "action \"respond\"",
    ] {
        assert!(schema.contains(field), "{field} in the schema");
    }
    // The same request gives the same decision, policies in a stable order.
    let mut f = facts(&["untrusted"], None);
    f.grants.fixed = true;
    let first = gate.judge_tool("orders.lookup", &json!({"order_id": "A-1"}), &f);
    for _ in 0..20 {
        assert_eq!(
            gate.judge_tool("orders.lookup", &json!({"order_id": "A-1"}), &f),
            first
        );
    }
    assert_eq!(first.verdict, Verdict::Deny);
}

/// A target none of whose policies has a `when` or `unless` is decided once, when the policies
/// load. That decision must be the one evaluating each request gives: the same gate with one
/// never-matching conditional policy added (so every target is evaluated per request) decides
/// every request below the same, whatever the labels, approvals, arguments and answer.
#[test]
fn decisions_made_once_at_load_equal_those_made_per_request() {
    let unconditional = r#"
@id("model-ok")
permit(principal, action == Action::"use_model", resource == Model::"small");
@id("no-delete")
forbid(principal, action == Action::"customers.delete", resource);
@id("lookups")
permit(principal, action in Action::"call_tool", resource in ToolGroup::"read_only");
@id("refunds-ask")
@ask("refunds need a person")
permit(principal, action == Action::"refunds.issue", resource);
@id("not-this-agent")
permit(principal == Agent::"researcher", action, resource);
@id("answers-held")
@ask("answers wait for a person")
permit(principal, action == Action::"respond", resource);
@id("delegate")
permit(principal, action == Action::"delegate", resource == Agent::"researcher");
"#;
    let once = gate_with(unconditional).unwrap();
    let each = gate_with(&format!(
        "{unconditional}\n@id(\"never\")\nforbid(principal, action, resource) when {{ context.budget_percent > 1000 }};\n"
    ))
    .unwrap();
    let calls = [
        ("orders.lookup", json!({"order_id": "A-1"})),
        ("web.get", json!({"url": "https://example.com/x"})),
        ("refunds.issue", json!({"order_id": "A-1", "amount": 12.5})),
        ("customers.delete", json!({"id": "c1"})),
        ("email.send", json!({"to": "a@example.com", "body": "hi"})),
        ("payments.wire", json!({"amount": 3})),
        ("no.such.tool", json!({})),
    ];
    let mut compared = 0;
    for labels in [
        &[][..],
        &["untrusted"][..],
        &["confidential", "untrusted"][..],
    ] {
        for approved in [None, Some("ann")] {
            let f = facts(labels, approved);
            for model in ["small", "support-script", "unknown"] {
                assert_eq!(
                    once.judge_model(model, &f),
                    each.judge_model(model, &f),
                    "{model}"
                );
                compared += 1;
            }
            for (tool, args) in &calls {
                assert_eq!(
                    once.judge_tool(tool, args, &f),
                    each.judge_tool(tool, args, &f),
                    "{tool}"
                );
                compared += 1;
            }
            for text in ["done", "see ![x](https://evil.example/?q=secret)"] {
                let answer = rein_policy::answer_facts(text, &Default::default());
                assert_eq!(
                    once.judge_answer(&answer, &f),
                    each.judge_answer(&answer, &f)
                );
                compared += 1;
            }
            for child in ["researcher", "stranger"] {
                assert_eq!(
                    once.judge_delegate(child, "find x", &f),
                    each.judge_delegate(child, "find x", &f)
                );
                compared += 1;
            }
            // A sub-agent judged by these (its parent's) policies is another principal.
            assert_eq!(
                once.judge_model_as("researcher", "support-script", &f),
                each.judge_model_as("researcher", "support-script", &f)
            );
        }
    }
    assert_eq!(compared, 6 * (3 + calls.len() + 2 + 2));
    // And the verdicts are the policies' own, not all one answer.
    let f = facts(&[], None);
    assert_eq!(once.judge_model("small", &f).verdict, Verdict::Allow);
    assert_eq!(
        once.judge_model("support-script", &f).verdict,
        Verdict::Deny
    );
    assert_eq!(
        once.judge_tool("customers.delete", &json!({"id": "c1"}), &f)
            .verdict,
        Verdict::Deny
    );
    assert_eq!(
        once.judge_tool(
            "refunds.issue",
            &json!({"order_id": "A-1", "amount": 1}),
            &f
        )
        .verdict,
        Verdict::Ask
    );
    let answer = rein_policy::answer_facts("done", &Default::default());
    assert_eq!(once.judge_answer(&answer, &f).verdict, Verdict::Ask);
}
