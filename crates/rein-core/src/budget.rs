//! Budgets and prices, as pure values: which ledger lines a run spends from (its own, and the
//! agent's, user's and tenant's per day or month), what a model call costs, and the built-in
//! price table. The ledger that holds the numbers durably is `rein-store`'s `BudgetLedger`.

use serde::{Deserialize, Serialize};

use crate::Usage;

/// Who a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One run and its sub-agents.
    Run,
    /// Every run of an agent.
    Agent,
    /// Every run for a user.
    User,
    /// Every run for a tenant.
    Tenant,
    /// Every run started with one API token (`token:cli` for runs started without one).
    Token,
}

/// Over what time a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// The run's lifetime.
    Run,
    /// A UTC day.
    Day,
    /// A UTC month.
    Month,
}

/// A limit on spending.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// Who it limits.
    pub scope: Scope,
    /// Over what time.
    pub period: Period,
    /// The most tokens.
    pub tokens: Option<u64>,
    /// The most money, in millionths of a US dollar.
    pub cost_micros: Option<u64>,
    /// A warning is recorded past this percentage.
    pub warn_percent: u8,
}

/// Tokens and money.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// Tokens (prompt + completion).
    pub tokens: u64,
    /// Millionths of a US dollar.
    pub cost_micros: u64,
}

impl Spend {
    /// The sum (saturating).
    pub fn plus(self, other: Spend) -> Spend {
        Spend {
            tokens: self.tokens.saturating_add(other.tokens),
            cost_micros: self.cost_micros.saturating_add(other.cost_micros),
        }
    }

    /// The larger share of `limit` this spend is, in percent (0 when nothing is limited).
    pub fn percent_of(&self, limit: &Limit) -> u64 {
        let share = |used: u64, max: Option<u64>| match max {
            Some(0) => 100,
            Some(max) => used.saturating_mul(100) / max,
            None => 0,
        };
        share(self.tokens, limit.tokens).max(share(self.cost_micros, limit.cost_micros))
    }

    /// Whether this spend stays within `limit`.
    pub fn within(&self, limit: &Limit) -> bool {
        limit.tokens.is_none_or(|t| self.tokens <= t)
            && limit.cost_micros.is_none_or(|c| self.cost_micros <= c)
    }
}

/// Who a run is, for finding its ledger lines.
#[derive(Debug, Clone, Copy)]
pub struct Spender<'a> {
    /// The top run of the run's tree (a sub-agent spends from its root's budget).
    pub root_run: &'a str,
    /// The agent.
    pub agent: &'a str,
    /// The user.
    pub user: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The API token the run was started with, if any.
    pub token: Option<&'a str>,
}

/// The ledger line a limit applies to at `now_ms`: (`scope:who`, period key).
pub fn ledger_line(limit: &Limit, who: &Spender<'_>, now_ms: u64) -> (String, String) {
    let key = match limit.scope {
        Scope::Run => format!("run:{}", who.root_run),
        Scope::Agent => format!("agent:{}", who.agent),
        Scope::User => format!("user:{}", who.user),
        Scope::Tenant => format!("tenant:{}", who.tenant),
        Scope::Token => format!("token:{}", who.token.unwrap_or("cli")),
    };
    (key, period_key(limit.period, now_ms))
}

/// `2026-11-23` for a day, `2026-11` for a month (UTC), `run` for a run's lifetime.
pub fn period_key(period: Period, now_ms: u64) -> String {
    let (y, m, d) = civil_date(now_ms / 86_400_000);
    match period {
        Period::Run => "run".into(),
        Period::Day => format!("{y:04}-{m:02}-{d:02}"),
        Period::Month => format!("{y:04}-{m:02}"),
    }
}

/// The (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
}

impl Price {
    /// What `usage` costs, in millionths of a dollar, rounded up.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        let micros =
            usage.input_tokens as f64 * self.input + usage.output_tokens as f64 * self.output;
        micros.max(0.0).ceil() as u64
    }
}

/// Built-in prices (US dollars per million tokens, list prices when this table was written), by
/// model name prefix; the longest matching prefix wins. `[prices."<model>"]` in agent.toml
/// overrides them. Models not listed cost 0 unless priced there.
pub const BUILTIN_PRICES: &[(&str, Price)] = &[
    (
        "gpt-4o-mini",
        Price {
            input: 0.15,
            output: 0.60,
        },
    ),
    (
        "gpt-4o",
        Price {
            input: 2.50,
            output: 10.00,
        },
    ),
    (
        "gpt-4.1-nano",
        Price {
            input: 0.10,
            output: 0.40,
        },
    ),
    (
        "gpt-4.1-mini",
        Price {
            input: 0.40,
            output: 1.60,
        },
    ),
    (
        "gpt-4.1",
        Price {
            input: 2.00,
            output: 8.00,
        },
    ),
    (
        "gpt-5-nano",
        Price {
            input: 0.05,
            output: 0.40,
        },
    ),
    (
        "gpt-5-mini",
        Price {
            input: 0.25,
            output: 2.00,
        },
    ),
    (
        "gpt-5",
        Price {
            input: 1.25,
            output: 10.00,
        },
    ),
    (
        "o3-mini",
        Price {
            input: 1.10,
            output: 4.40,
        },
    ),
    (
        "o4-mini",
        Price {
            input: 1.10,
            output: 4.40,
        },
    ),
    (
        "o3",
        Price {
            input: 2.00,
            output: 8.00,
        },
    ),
    (
        "claude-3-5-haiku",
        Price {
            input: 0.80,
            output: 4.00,
        },
    ),
    (
        "claude-haiku-4",
        Price {
            input: 1.00,
            output: 5.00,
        },
    ),
    (
        "claude-sonnet-4",
        Price {
            input: 3.00,
            output: 15.00,
        },
    ),
    (
        "claude-3-7-sonnet",
        Price {
            input: 3.00,
            output: 15.00,
        },
    ),
    (
        "claude-opus-4",
        Price {
            input: 15.00,
            output: 75.00,
        },
    ),
];

/// The built-in price of a model, by its longest matching prefix.
pub fn builtin_price(model: &str) -> Option<Price> {
    BUILTIN_PRICES
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-11-23T09:00:00Z
        let ms = 1_795_424_400_000;
        assert_eq!(period_key(Period::Day, ms), "2026-11-23");
        assert_eq!(period_key(Period::Month, ms), "2026-11");
        assert_eq!(period_key(Period::Day, 0), "1970-01-01");
        // 2024-02-29 (a leap day) and the next day.
        assert_eq!(period_key(Period::Day, 1_709_164_800_000), "2024-02-29");
        assert_eq!(period_key(Period::Day, 1_709_251_200_000), "2024-03-01");
    }

    #[test]
    fn prices_pick_the_longest_prefix_and_round_up() {
        assert_eq!(builtin_price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(builtin_price("gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert_eq!(builtin_price("llama3"), None);
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 100,
        };
        // 1000 * 2.5 + 100 * 10 = 3500 micro-dollars.
        assert_eq!(builtin_price("gpt-4o").unwrap().cost_micros(&usage), 3500);
        assert_eq!(
            Price {
                input: 0.15,
                output: 0.6
            }
            .cost_micros(&Usage {
                input_tokens: 1,
                output_tokens: 0
            }),
            1
        );
    }

    #[test]
    fn spend_is_checked_against_every_limit_it_has() {
        let limit = Limit {
            scope: Scope::User,
            period: Period::Day,
            tokens: Some(1000),
            cost_micros: Some(50),
            warn_percent: 80,
        };
        assert!(
            Spend {
                tokens: 1000,
                cost_micros: 50
            }
            .within(&limit)
        );
        assert!(
            !Spend {
                tokens: 1001,
                cost_micros: 0
            }
            .within(&limit)
        );
        assert!(
            !Spend {
                tokens: 0,
                cost_micros: 51
            }
            .within(&limit)
        );
        assert_eq!(
            Spend {
                tokens: 500,
                cost_micros: 45
            }
            .percent_of(&limit),
            90
        );
    }
}
