//! Circuit breakers for tools and models, shared by an agent's runs: after `failures` failures
//! in a row a breaker opens and refuses calls; after `cooldown` it lets one probe through
//! (half-open); the probe's success closes it, its failure opens it again, and a probe that
//! ends with neither (its call refused by the policies, held for a person, or refused by the
//! provider as malformed; its run stopped) lets another call probe once a cool-down has passed
//! since it went. Every change of state is returned to the caller, which records it as a
//! `notice` event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the given time (ms).
    Open {
        /// When a probe may go through.
        until_ms: u64,
    },
    /// One probe is in flight.
    HalfOpen {
        /// When it went (ms): a cool-down later, with no answer from it, another may go.
        since_ms: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Breaker {
    state: BreakerState,
    failures: u32,
    /// The cool-down it last opened for.
    cooldown_ms: u64,
}

/// What a caller may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Pass,
    /// Go ahead as the probe of a half-open breaker (a state change to record).
    Probe,
    /// Refused: the breaker is open for this many more milliseconds.
    Refused {
        /// Until a probe is allowed.
        retry_in_ms: u64,
    },
}

/// A change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened after this many failures in a row.
    Opened {
        /// Failures in a row.
        failures: u32,
        /// How long it stays open.
        cooldown_ms: u64,
    },
    /// A probe succeeded: the breaker closed.
    Closed,
}

/// Breakers by name (`tool:<name>`, `model:<name>`).
#[derive(Debug, Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let breaker = map.entry(name.to_owned()).or_insert(Breaker {
            state: BreakerState::Closed,
            failures: 0,
            cooldown_ms: 0,
        });
        f(breaker)
    }

    /// Whether a call may go through now.
    pub fn admit(&self, name: &str, now_ms: u64) -> Admission {
        self.with(name, |b| match b.state {
            BreakerState::Closed => Admission::Pass,
            BreakerState::HalfOpen { since_ms } if now_ms < since_ms + b.cooldown_ms => {
                Admission::Refused {
                    retry_in_ms: since_ms + b.cooldown_ms - now_ms,
                }
            }
            BreakerState::HalfOpen { .. } => {
                b.state = BreakerState::HalfOpen { since_ms: now_ms };
                Admission::Probe
            }
            BreakerState::Open { until_ms } if now_ms >= until_ms => {
                b.state = BreakerState::HalfOpen { since_ms: now_ms };
                Admission::Probe
            }
            BreakerState::Open { until_ms } => Admission::Refused {
                retry_in_ms: until_ms - now_ms,
            },
        })
    }

    /// Records a call's result; returns the state change, if any.
    pub fn record(
        &self,
        name: &str,
        ok: bool,
        threshold: u32,
        cooldown: Duration,
        now_ms: u64,
    ) -> Option<Transition> {
        self.with(name, |b| {
            if ok {
                b.failures = 0;
                let was = b.state;
                b.state = BreakerState::Closed;
                return (was != BreakerState::Closed).then_some(Transition::Closed);
            }
            b.failures += 1;
            let reopen = matches!(b.state, BreakerState::HalfOpen { .. });
            if reopen || (b.state == BreakerState::Closed && b.failures >= threshold) {
                let cooldown_ms = cooldown.as_millis() as u64;
                b.cooldown_ms = cooldown_ms;
                b.state = BreakerState::Open {
                    until_ms: now_ms + cooldown_ms,
                };
                return Some(Transition::Opened {
                    failures: b.failures,
                    cooldown_ms,
                });
            }
            None
        })
    }

    /// A breaker's state.
    pub fn state(&self, name: &str) -> BreakerState {
        self.with(name, |b| b.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_probes_after_cooldown_and_closes_on_success() {
        let b = Breakers::default();
        let cool = Duration::from_millis(100);
        assert_eq!(b.record("t", false, 2, cool, 0), None);
        assert_eq!(
            b.record("t", false, 2, cool, 0),
            Some(Transition::Opened {
                failures: 2,
                cooldown_ms: 100
            })
        );
        assert_eq!(b.admit("t", 50), Admission::Refused { retry_in_ms: 50 });
        assert_eq!(b.admit("t", 100), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit("t", 100), Admission::Refused { retry_in_ms: 100 });
        // A failed probe opens it again at once.
        assert_eq!(
            b.record("t", false, 2, cool, 100),
            Some(Transition::Opened {
                failures: 3,
                cooldown_ms: 100
            })
        );
        assert_eq!(b.admit("t", 200), Admission::Probe);
        assert_eq!(b.record("t", true, 2, cool, 200), Some(Transition::Closed));
        assert_eq!(b.admit("t", 200), Admission::Pass);
        assert_eq!(b.state("t"), BreakerState::Closed);
    }

    /// A probe that ends with no verdict on what it probes (the policies refused the call, a
    /// person was asked about it, the budget could not hold it, the provider refused the request
    /// as malformed, the run stopped) must not leave the breaker half-open for good, refusing
    /// every other call: once a cool-down has passed since it went, another call probes.
    #[test]
    fn a_probe_never_answered_lets_another_through_after_a_cool_down() {
        let b = Breakers::default();
        let cool = Duration::from_millis(100);
        b.record("t", false, 1, cool, 0);
        assert_eq!(b.admit("t", 100), Admission::Probe);
        assert_eq!(b.admit("t", 150), Admission::Refused { retry_in_ms: 50 });
        assert_eq!(b.admit("t", 200), Admission::Probe, "stuck half-open");
        assert_eq!(b.admit("t", 201), Admission::Refused { retry_in_ms: 99 });
        assert_eq!(b.record("t", true, 1, cool, 250), Some(Transition::Closed));
        assert_eq!(b.admit("t", 250), Admission::Pass);
    }
}
