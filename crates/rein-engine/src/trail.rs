//! The audit trail against the event log: filling in what crashes left out, for every run, and
//! checking that every event has exactly one record of the right kind and every record an event.

use std::collections::{HashMap, HashSet};

use rein_store::RunFilter;
use serde::Serialize;

use crate::lease::holder_gone;
use crate::{Engine, EngineError};

/// What cross-checking the trail against the event log found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrailCheck {
    /// Runs checked.
    pub runs: u64,
    /// Events checked.
    pub events: u64,
    /// Records filled in before checking (events a crash had left out).
    pub filled: u64,
    /// Runs a live process is driving now: their last events may not be recorded yet.
    pub in_progress: Vec<String>,
    /// Runs whose records predate records naming their events: not checked event by event.
    pub legacy: Vec<String>,
    /// What does not match, for people: events without a record, records without an event,
    /// records of the wrong kind, events recorded twice.
    pub problems: Vec<String>,
}

impl Engine {
    /// Whether a live process drives `run_id` now (it holds the run's lease, which has not
    /// lapsed, and is not known to have died).
    pub fn driven_now(&self, run_id: &str) -> Result<bool, EngineError> {
        let now = self.clock.now_ms();
        Ok(self
            .store
            .lease_holder(run_id)?
            .is_some_and(|h| h.expires_ms > now && !holder_gone(&h.owner)))
    }

    /// Fills in the audit records of every run that a crash left out (runs a live process
    /// drives are left to it). Returns how many records were written.
    pub fn fill_audit(&self) -> Result<u64, EngineError> {
        let mut filled = 0;
        let cursors = self
            .audit_log()
            .cursors()
            .map_err(|e| EngineError::Audit(e.to_string()))?;
        for run in self.store.list_runs(&RunFilter {
            limit: usize::MAX >> 1,
            ..RunFilter::default()
        })? {
            let cursor = cursors.of(&run.id);
            if cursor.is_some_and(|c| c < run.events) && !self.driven_now(&run.id)? {
                filled += self.backfill_audit(&run.id)? as u64;
            }
        }
        Ok(filled)
    }

    /// Checks the trail against the event log, after filling in what crashes left out.
    pub fn check_trail(&self) -> Result<TrailCheck, EngineError> {
        let mut check = TrailCheck {
            filled: self.fill_audit()?,
            ..TrailCheck::default()
        };
        let dir = &self.audit_log().paths().dir;
        // run -> event -> the records naming it: (record seq, kind), and the runs whose records
        // name no event. Only these are kept of the records, read a piece at a time, once: each
        // run's audit cursor is the last event its records name.
        let mut by_event: HashMap<String, HashMap<u64, Vec<(u64, String)>>> = HashMap::new();
        let mut legacy: HashSet<String> = HashSet::new();
        rein_audit::each_record_head(dir, |head| match (head.run_id, head.event) {
            (Some(run), Some(event)) => by_event
                .entry(run)
                .or_default()
                .entry(event)
                .or_default()
                .push((head.seq, head.kind)),
            (Some(run), None) => {
                legacy.insert(run);
            }
            (None, _) => {}
        })
        .map_err(|e| EngineError::Audit(e.to_string()))?;
        let runs = self.store.list_runs(&RunFilter {
            limit: usize::MAX >> 1,
            ..RunFilter::default()
        })?;
        let mut known: HashMap<&str, u64> = HashMap::new();
        for run in &runs {
            known.insert(run.id.as_str(), run.events);
            check.runs += 1;
            if legacy.contains(&run.id) {
                check.legacy.push(run.id.clone());
                continue;
            }
            let recorded = by_event.get(&run.id);
            let cursor = recorded
                .and_then(|events| events.keys().max().copied())
                .unwrap_or(0);
            let live = cursor < run.events && self.driven_now(&run.id)?;
            if live {
                check.in_progress.push(run.id.clone());
            }
            for stored in self.store.events(&run.id)? {
                check.events += 1;
                let expected = crate::audit::record_kind(&stored.event);
                match recorded.and_then(|r| r.get(&stored.seq)) {
                    None if live && stored.seq > cursor => {}
                    None => check.problems.push(format!(
                        "run {} event {} ({}) has no audit record",
                        run.id,
                        stored.seq,
                        stored.event.kind()
                    )),
                    Some(found) if found.len() > 1 => check.problems.push(format!(
                        "run {} event {} is recorded {} times (records {})",
                        run.id,
                        stored.seq,
                        found.len(),
                        found
                            .iter()
                            .map(|(s, _)| s.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Some(found) if found[0].1 != expected => check.problems.push(format!(
                        "audit record {} says run {} event {} is a {}, but the event log holds a {} there",
                        found[0].0,
                        run.id,
                        stored.seq,
                        found[0].1,
                        stored.event.kind()
                    )),
                    Some(_) => {}
                }
            }
        }
        for (run, events) in &by_event {
            for (event, found) in events {
                let exists = known.get(run.as_str()).is_some_and(|last| event <= last);
                if !exists {
                    check.problems.push(format!(
                        "audit record {} names run {run} event {event}, which the event log does not hold",
                        found[0].0
                    ));
                }
            }
        }
        check.problems.sort();
        Ok(check)
    }
}
