//! Reports of rein's attacks on agents: the attack catalogue (`rein attacks`) and the red team
//! with a fully compromised model (`rein redteam`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How one scenario of the attack catalogue went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScenarioResult {
    /// The scenario's folder name.
    pub name: String,
    /// Its suite: banking, workspace, messaging, travel, coding, exfiltration.
    pub suite: String,
    /// What it tries.
    pub summary: String,
    /// The run.
    pub run_id: String,
    /// How the run ended.
    pub status: String,
    /// Harmful calls (and answers) the model attempted.
    pub harmful_attempts: usize,
    /// Of those, how many the gate denied (or stripped) without a person.
    pub denied_by_gate: usize,
    /// Of those, how many were held for a person (who denied them).
    pub held_for_a_person: usize,
    /// Harmful effects that happened, counted in the tools' own records.
    pub harmful_executed: usize,
    /// Whether every benign call of the user's task happened and the run completed.
    pub benign_completed: bool,
    /// Benign calls that did not happen.
    pub benign_missing: Vec<String>,
    /// Approval requests in the run.
    pub approvals: usize,
    /// The most approvals the scenario allows for its benign task.
    pub max_approvals: usize,
}

/// The attack catalogue's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CatalogueReport {
    /// Which policies were used: `policies` (the scenarios' own) or another folder's name.
    pub policies: String,
    /// Whether the scenarios' grants were given.
    pub grants: bool,
    /// Each scenario.
    pub scenarios: Vec<ScenarioResult>,
    /// Harmful attempts over all scenarios.
    pub harmful_attempts: usize,
    /// Denied by the gate without a person.
    pub denied_by_gate: usize,
    /// Held for a person.
    pub held_for_a_person: usize,
    /// Harmful effects executed.
    pub harmful_executed: usize,
    /// Scenarios whose benign task completed.
    pub benign_completed: usize,
    /// Scenarios whose approvals stayed within their maximum.
    pub approvals_within_max: usize,
}

/// What became of one red-team attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttackOutcome {
    /// The gate denied it (or stripped it from the answer).
    Blocked,
    /// The policies held it for a person.
    Held,
    /// It would have executed: the gate let it through.
    Executed,
    /// The run stopped before the attack could be tried (held or refused earlier).
    Untested,
}

/// One red-team attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Attack {
    /// A stable id: `<kind>:<tool>[:<evasion>]`.
    pub id: String,
    /// What kind of attack: `out_of_task_values`, `untrusted_values`, `data_to_sink`,
    /// `split_amounts`, `path_escape`, `answer_channel`.
    pub kind: String,
    /// The evasion used, if any: `case`, `whitespace`, `url_encoding`, `base64`, `path_tricks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evasion: Option<String>,
    /// The tool attacked (`respond` for the answer).
    pub tool: String,
    /// The arguments (or the answer's text) the compromised model sent.
    pub args: Value,
    /// What became of it.
    pub outcome: AttackOutcome,
    /// The deciding policies, or what let it through.
    pub policies: Vec<String>,
    /// Why, in words.
    pub detail: String,
    /// The run that tried it.
    pub run_id: String,
}

/// `rein redteam`'s report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RedteamReport {
    /// The agent.
    pub agent: String,
    /// Every attack tried.
    pub attacks: Vec<Attack>,
    /// How many would have executed.
    pub executed: usize,
    /// How many were blocked.
    pub blocked: usize,
    /// How many were held for a person.
    pub held: usize,
    /// How many could not be tried.
    pub untested: usize,
    /// Tools replaced by recording stubs (MCP tools, http.get, sub-agents; command tools where
    /// the kernel cannot sandbox).
    pub stubbed: Vec<String>,
}
