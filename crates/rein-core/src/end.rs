//! The named ways a run can end, each with its own process exit code.

use serde::{Deserialize, Serialize};

/// How a run ended. Every run that stops says which of these it is; there is no silent failure.
///
/// The exit code of each state is part of rein's public interface (documented in README.md) and
/// never changes once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    /// The model gave its final answer; every tool call it asked for has an outcome.
    Completed,
    /// The run could not go on: a provider kept failing, the model script ran out, or the
    /// engine hit an error it cannot recover from. The partial output and the reason are kept.
    Failed,
    /// A hard limit (steps or wall-clock) was reached before the model finished. The partial
    /// output is kept.
    BudgetExhausted,
    /// After a crash, a tool call that is not idempotent has an intent but no recorded outcome:
    /// rein cannot know whether its effect happened, so it stops and names the call instead of
    /// risking doing it twice.
    NeedsReconciliation,
    /// Not an end: the run is suspended until a person decides its pending approvals; `rein runs
    /// resume` continues it.
    AwaitingApproval,
    /// The policies refused what the run needs to go on (its model), so it stopped.
    Denied,
    /// The run could not finish (as for `failed`), but some of its tool calls had completed:
    /// the report lists what was done, what was not, and why it stopped.
    Partial,
    /// A person (or a program through the API) cancelled the run; it stopped at its next step
    /// boundary, after any tool call in flight had finished.
    Cancelled,
}

impl EndState {
    /// All end states, for documentation and exhaustive tests.
    pub const ALL: [EndState; 8] = [
        EndState::Completed,
        EndState::Failed,
        EndState::BudgetExhausted,
        EndState::NeedsReconciliation,
        EndState::AwaitingApproval,
        EndState::Denied,
        EndState::Partial,
        EndState::Cancelled,
    ];

    /// The process exit code `rein run` and `rein runs resume` use for this state.
    ///
    /// 1 and 2 are taken by errors in rein itself and by command-line usage errors.
    pub fn exit_code(self) -> i32 {
        match self {
            EndState::Completed => 0,
            EndState::Failed => 10,
            EndState::BudgetExhausted => 11,
            EndState::NeedsReconciliation => 12,
            EndState::AwaitingApproval => 13,
            EndState::Denied => 14,
            EndState::Partial => 15,
            EndState::Cancelled => 16,
        }
    }

    /// The snake_case name used in events, JSON output and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            EndState::Completed => "completed",
            EndState::Failed => "failed",
            EndState::BudgetExhausted => "budget_exhausted",
            EndState::NeedsReconciliation => "needs_reconciliation",
            EndState::AwaitingApproval => "awaiting_approval",
            EndState::Denied => "denied",
            EndState::Partial => "partial",
            EndState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for EndState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_names_round_trip() {
        let mut codes: Vec<i32> = EndState::ALL.iter().map(|s| s.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), EndState::ALL.len());
        assert!(!codes.contains(&1) && !codes.contains(&2));
        for s in EndState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            let back: EndState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s);
        }
    }
}
