//! Verdicts: how the policies that matched a request combine into allow, deny or ask.
//!
//! This is the part of the gate that needs no policy engine: given which policies were satisfied
//! (and which could not be evaluated), decide. Forbid wins; with no permit, the answer is deny
//! (default deny); among permits, the strictest wins, so one `@ask` permit turns an allow into an
//! ask. A forbid that fails to evaluate denies (fail closed); a permit that fails grants nothing.

use serde::{Deserialize, Serialize};

/// What the gate says about a proposed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The action may happen.
    Allow,
    /// The action must not happen; the reason goes back to the model.
    Deny,
    /// A person must approve the action first; the run suspends until they decide.
    Ask,
}

impl Verdict {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ask => "ask",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a policy grants or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `permit`.
    Permit,
    /// `forbid`.
    Forbid,
}

/// A policy whose conditions held for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Its id.
    pub id: String,
    /// Permit or forbid.
    pub effect: Effect,
    /// Its `@ask` text, if it is an ask policy.
    pub ask: Option<String>,
    /// Its `@reason` text, if it has one.
    pub reason: Option<String>,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// The ids of the policies that decided it (empty for default deny).
    pub policies: Vec<String>,
    /// Why, in words.
    pub reasons: Vec<String>,
}

/// A denial in words, as a call's result and a gateway's refusal say it: `denied by rein's
/// policies (policy <ids>): <reasons>`.
pub fn denial(policies: &[String], reasons: &[String]) -> String {
    let by = if policies.is_empty() {
        String::new()
    } else {
        format!(" (policy {})", policies.join(", "))
    };
    format!("denied by rein's policies{by}: {}", reasons.join("; "))
}

/// Combines the satisfied policies (and those that failed to evaluate) into a decision. The
/// deciding policies (and their reasons, in the same order) are listed by id, whatever order the
/// policy engine found them in, so the same request always gives the same decision record.
pub fn compose(matched: &[Matched], failed: &[(String, Effect)]) -> Decision {
    let mut matched: Vec<&Matched> = matched.iter().collect();
    matched.sort_by(|a, b| a.id.cmp(&b.id));
    let mut failed_forbids: Vec<&String> = failed
        .iter()
        .filter(|(_, e)| *e == Effect::Forbid)
        .map(|(id, _)| id)
        .collect();
    failed_forbids.sort();
    if !failed_forbids.is_empty() {
        return Decision {
            verdict: Verdict::Deny,
            policies: failed_forbids.iter().map(|id| (*id).clone()).collect(),
            reasons: failed_forbids
                .iter()
                .map(|id| format!("forbid policy `{id}` could not be evaluated; failing closed"))
                .collect(),
        };
    }
    let pick = |effect: Effect| matched.iter().copied().filter(move |m| m.effect == effect);
    let forbids: Vec<&Matched> = pick(Effect::Forbid).collect();
    if !forbids.is_empty() {
        return Decision {
            verdict: Verdict::Deny,
            policies: forbids.iter().map(|m| m.id.clone()).collect(),
            reasons: forbids
                .iter()
                .map(|m| {
                    m.reason
                        .clone()
                        .unwrap_or_else(|| format!("forbidden by policy `{}`", m.id))
                })
                .collect(),
        };
    }
    let permits: Vec<&Matched> = pick(Effect::Permit).collect();
    if permits.is_empty() {
        return Decision {
            verdict: Verdict::Deny,
            policies: vec![],
            reasons: vec!["no policy permits this (default deny)".into()],
        };
    }
    let asks: Vec<&Matched> = permits
        .iter()
        .copied()
        .filter(|m| m.ask.is_some())
        .collect();
    if !asks.is_empty() {
        return Decision {
            verdict: Verdict::Ask,
            policies: asks.iter().map(|m| m.id.clone()).collect(),
            reasons: asks.iter().filter_map(|m| m.ask.clone()).collect(),
        };
    }
    Decision {
        verdict: Verdict::Allow,
        policies: permits.iter().map(|m| m.id.clone()).collect(),
        reasons: permits.iter().filter_map(|m| m.reason.clone()).collect(),
    }
}

/// A sub-agent's decision: its own policies and its parent's grant (the parent's policies judging
/// the child as principal) must both allow. Either one denying denies; either one asking asks.
pub fn within_parent(own: Decision, parent: Decision) -> Decision {
    let from_parent = |d: Decision| Decision {
        verdict: d.verdict,
        policies: d
            .policies
            .into_iter()
            .map(|p| format!("parent:{p}"))
            .collect(),
        reasons: d
            .reasons
            .into_iter()
            .map(|r| format!("the parent agent's policies: {r}"))
            .collect(),
    };
    match (own.verdict, parent.verdict) {
        (_, Verdict::Deny) => from_parent(parent),
        (Verdict::Deny, _) => own,
        (Verdict::Allow, Verdict::Allow) => {
            let parent = from_parent(parent);
            Decision {
                verdict: Verdict::Allow,
                policies: own.policies.into_iter().chain(parent.policies).collect(),
                reasons: own.reasons.into_iter().chain(parent.reasons).collect(),
            }
        }
        (Verdict::Ask, Verdict::Allow) => own,
        (Verdict::Allow, Verdict::Ask) => from_parent(parent),
        (Verdict::Ask, Verdict::Ask) => {
            let parent = from_parent(parent);
            Decision {
                verdict: Verdict::Ask,
                policies: own.policies.into_iter().chain(parent.policies).collect(),
                reasons: own.reasons.into_iter().chain(parent.reasons).collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, effect: Effect, ask: bool) -> Matched {
        Matched {
            id: id.into(),
            effect,
            ask: ask.then(|| format!("ask {id}")),
            reason: None,
        }
    }

    /// Every combination of up to four matched policies (each permit, ask-permit or forbid) and a
    /// possibly failed forbid or permit: the verdict follows the rules in the module docs.
    #[test]
    fn composition_rules_hold_for_every_combination() {
        let kinds = [
            None,
            Some((Effect::Permit, false)),
            Some((Effect::Permit, true)),
            Some((Effect::Forbid, false)),
        ];
        let failures = [None, Some(Effect::Permit), Some(Effect::Forbid)];
        let mut checked = 0;
        for a in kinds {
            for b in kinds {
                for c in kinds {
                    for d in kinds {
                        for failure in failures {
                            let matched: Vec<Matched> = [a, b, c, d]
                                .iter()
                                .enumerate()
                                .filter_map(|(i, k)| k.map(|(e, ask)| m(&format!("p{i}"), e, ask)))
                                .collect();
                            let failed: Vec<(String, Effect)> = failure
                                .map(|e| ("broken".to_string(), e))
                                .into_iter()
                                .collect();
                            let decision = compose(&matched, &failed);
                            let any = |e: Effect, ask: bool| {
                                matched.iter().any(|x| {
                                    x.effect == e && (e == Effect::Forbid || x.ask.is_some() == ask)
                                })
                            };
                            let expected =
                                if failure == Some(Effect::Forbid) || any(Effect::Forbid, false) {
                                    Verdict::Deny
                                } else if any(Effect::Permit, true) {
                                    Verdict::Ask
                                } else if any(Effect::Permit, false) {
                                    Verdict::Allow
                                } else {
                                    Verdict::Deny
                                };
                            assert_eq!(decision.verdict, expected, "{matched:?} failed {failed:?}");
                            assert!(
                                !decision.reasons.is_empty() || decision.verdict == Verdict::Allow
                            );
                            if expected == Verdict::Deny
                                && failure != Some(Effect::Forbid)
                                && !any(Effect::Forbid, false)
                            {
                                assert!(
                                    decision.policies.is_empty()
                                        && decision.reasons[0].contains("default deny")
                                );
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 4 * 4 * 4 * 3);
    }

    #[test]
    fn a_child_never_gets_more_than_its_parent_grants() {
        let d = |verdict| Decision {
            verdict,
            policies: vec!["p".into()],
            reasons: vec!["r".into()],
        };
        let all = [Verdict::Allow, Verdict::Ask, Verdict::Deny];
        for own in all {
            for parent in all {
                let got = within_parent(d(own), d(parent)).verdict;
                let strictness = |v: Verdict| match v {
                    Verdict::Allow => 0,
                    Verdict::Ask => 1,
                    Verdict::Deny => 2,
                };
                assert_eq!(
                    strictness(got),
                    strictness(own).max(strictness(parent)),
                    "{own} and parent {parent}"
                );
            }
        }
        let got = within_parent(d(Verdict::Allow), d(Verdict::Deny));
        assert_eq!(
            (got.policies, got.reasons),
            (
                vec!["parent:p".to_string()],
                vec!["the parent agent's policies: r".to_string()]
            )
        );
    }

    #[test]
    fn the_same_request_gives_the_same_decision_whatever_order_policies_matched_in() {
        let a = [
            m("c-forbid", Effect::Forbid, false),
            m("a-forbid", Effect::Forbid, false),
            m("b-forbid", Effect::Forbid, false),
        ];
        let mut b = a.clone();
        b.reverse();
        let (x, y) = (compose(&a, &[]), compose(&b, &[]));
        assert_eq!(x, y);
        assert_eq!(x.policies, ["a-forbid", "b-forbid", "c-forbid"]);
        let failed = [
            ("z".to_owned(), Effect::Forbid),
            ("y".to_owned(), Effect::Forbid),
        ];
        assert_eq!(compose(&[], &failed).policies, ["y", "z"]);
    }

    #[test]
    fn decisions_name_the_deciding_policies() {
        let d = compose(
            &[
                m("all", Effect::Permit, false),
                m("big-refund", Effect::Permit, true),
            ],
            &[],
        );
        assert_eq!(
            (d.verdict, d.policies, d.reasons),
            (
                Verdict::Ask,
                vec!["big-refund".to_string()],
                vec!["ask big-refund".to_string()]
            )
        );
        let mut forbid = m("never", Effect::Forbid, false);
        forbid.reason = Some("customers are never deleted".into());
        let d = compose(&[m("all", Effect::Permit, false), forbid], &[]);
        assert_eq!(
            (d.verdict, d.policies, d.reasons),
            (
                Verdict::Deny,
                vec!["never".to_string()],
                vec!["customers are never deleted".to_string()]
            )
        );
    }
}
