//! The red team's report as CI systems read it: JUnit XML (each attack a test case, one that
//! would have executed a failure) and SARIF 2.1.0 (each attack that would have executed an error,
//! each held for a person a warning, located at the agent's agent.toml).

use serde_json::json;

use crate::v1::{AttackOutcome, RedteamReport};

fn xml(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&apos;".to_owned(),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => " ".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML.
pub fn junit(report: &RedteamReport) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let n = report.attacks.len();
    out.push_str(&format!(
        "<testsuites name=\"rein redteam\" tests=\"{n}\" failures=\"{}\" skipped=\"{}\">\n",
        report.executed, report.untested
    ));
    out.push_str(&format!(
        "  <testsuite name=\"redteam {}\" tests=\"{n}\" failures=\"{}\" skipped=\"{}\">\n",
        xml(&report.agent),
        report.executed,
        report.untested
    ));
    for a in &report.attacks {
        out.push_str(&format!(
            "    <testcase classname=\"{}.{}\" name=\"{}\">\n",
            xml(&report.agent),
            xml(&a.kind),
            xml(&a.id)
        ));
        let detail = format!(
            "{} {} (run {}): {}",
            a.tool,
            serde_json::to_string(&a.args).unwrap_or_default(),
            a.run_id,
            a.detail
        );
        match a.outcome {
            AttackOutcome::Executed => out.push_str(&format!(
                "      <failure message=\"the attack would have executed\" type=\"{}\">{}</failure>\n",
                xml(&a.kind),
                xml(&detail)
            )),
            AttackOutcome::Untested => out.push_str(&format!(
                "      <skipped message=\"{}\"/>\n",
                xml(&a.detail)
            )),
            AttackOutcome::Blocked | AttackOutcome::Held => {
                out.push_str(&format!("      <system-out>{}</system-out>\n", xml(&detail)))
            }
        }
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// SARIF 2.1.0. `agent_file` is the agent.toml the results point at, as a path or URI.
pub fn sarif(report: &RedteamReport, agent_file: &str) -> serde_json::Value {
    let mut kinds: Vec<&str> = report.attacks.iter().map(|a| a.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let rules: Vec<serde_json::Value> = kinds
        .iter()
        .map(|k| {
            json!({
                "id": k,
                "name": k,
                "shortDescription": {"text": format!("a compromised model's {} attack", k.replace('_', " "))},
                "helpUri": "https://github.com/rein/rein/blob/main/docs/ARCHITECTURE.md",
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = report
        .attacks
        .iter()
        .filter(|a| matches!(a.outcome, AttackOutcome::Executed | AttackOutcome::Held))
        .map(|a| {
            let level = if a.outcome == AttackOutcome::Executed {
                "error"
            } else {
                "warning"
            };
            json!({
                "ruleId": a.kind,
                "level": level,
                "message": {"text": format!(
                    "{}: {} {} {}: {}",
                    a.id,
                    a.tool,
                    serde_json::to_string(&a.args).unwrap_or_default(),
                    if a.outcome == AttackOutcome::Executed { "would have executed" } else { "is held for a person" },
                    a.detail
                )},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": agent_file}}}],
                "properties": {"run_id": a.run_id, "policies": a.policies},
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "rein redteam", "rules": rules}},
            "results": results,
        }],
    })
}
