//! The runs' audit cursors as a log writer keeps them: the last event of each run the log holds
//! a record of, so a record written twice (a backfill racing the writer that was to write it) is
//! written once.
//!
//! A process that serves a run per request must not keep one for every run it ever saw: it
//! keeps them for runs that have not ended, and for the last that have (50,000 unless
//! [`crate::AuditOptions::ended_cursors_kept`] says) (a record
//! written twice comes from a race of moments, not from long ago). A cursor it forgot is read
//! from the records file again when asked for ([`Cursors::of`] says so), which only a backfill of
//! a run that ended long ago does.

use std::collections::{HashMap, HashSet, VecDeque};

/// The record kind that ends a run.
pub(crate) const RUN_ENDED: &str = "run_ended";

/// How many ended runs' cursors are kept unless the options say.
pub(crate) const ENDED_KEPT: usize = 50_000;

/// A run's cursor as the writer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// The last event recorded.
    At(u64),
    /// Its records predate records naming their events.
    Legacy,
    /// Not known here: forgotten, or never seen. `forgotten` says whether any cursor was
    /// forgotten (else the run has no record).
    Unknown { forgotten: bool },
}

/// The cursors a writer keeps.
#[derive(Debug, Default)]
pub(crate) struct Cursors {
    by_run: HashMap<String, u64>,
    /// Runs with records that name no event (written before records named their events).
    legacy: HashSet<String>,
    /// Ended runs whose cursors are kept, oldest first.
    ended: VecDeque<String>,
    /// Whether a cursor was ever forgotten.
    forgotten: bool,
}

impl Cursors {
    /// What is known of `run`.
    pub(crate) fn of(&self, run: &str) -> Known {
        if self.legacy.contains(run) {
            return Known::Legacy;
        }
        match self.by_run.get(run) {
            Some(at) => Known::At(*at),
            None => Known::Unknown {
                forgotten: self.forgotten,
            },
        }
    }

    /// Notes a record of `run`'s event `event` (one that ends the run if `ends`), keeping the
    /// cursors of the last `kept` ended runs; false if the log holds it already (as far as is
    /// known here).
    pub(crate) fn advance(&mut self, run: &str, event: u64, ends: bool, kept: usize) -> bool {
        match self.by_run.get_mut(run) {
            Some(cursor) if *cursor >= event => return false,
            Some(cursor) => *cursor = event,
            None => {
                self.by_run.insert(run.to_owned(), event);
            }
        }
        if ends {
            self.ended.push_back(run.to_owned());
            if self.ended.len() > kept
                && let Some(old) = self.ended.pop_front()
            {
                // (A run reconciled and going on since is forgotten too: its next record is
                // then taken as new, which it is.)
                self.by_run.remove(&old);
                self.forgotten = true;
            }
        }
        true
    }

    /// Notes a record of `run` that names no event.
    pub(crate) fn legacy(&mut self, run: &str) {
        if !self.legacy.contains(run) {
            self.legacy.insert(run.to_owned());
        }
    }

    /// How many runs' cursors are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_run.len()
    }
}

/// Whether a record line (as the log writes it: `{"seq":..,"at_ms":..,"kind":"..",...}`) is of
/// [`RUN_ENDED`]: its first `kind` field, which comes before anything a record's data holds.
pub(crate) fn ends_run(line: &[u8]) -> bool {
    const KIND: &[u8] = b"\"kind\":\"";
    line.windows(KIND.len())
        .position(|w| w == KIND)
        .is_some_and(|at| line[at + KIND.len()..].starts_with(b"run_ended\""))
}

/// Every run's cursor in a records file's lines, and the runs whose records name no event: a
/// whole log's, read once (for a check of every run, or a cursor that was forgotten).
#[derive(Debug, Default)]
pub struct AllCursors {
    by_run: HashMap<String, u64>,
    legacy: HashSet<String>,
}

impl AllCursors {
    /// Notes one record line of the log.
    pub(crate) fn note(&mut self, line: &[u8]) {
        match crate::log::event_ref(line) {
            Some((run, Some(event))) => {
                let cursor = self.by_run.entry(run).or_default();
                *cursor = (*cursor).max(event);
            }
            Some((run, None)) => {
                self.legacy.insert(run);
            }
            None => {}
        }
    }

    /// The last event of `run` the log holds a record of (0 if none); `None` for a run whose
    /// records predate records naming their events. As [`crate::AuditLog::cursor`].
    pub fn of(&self, run: &str) -> Option<u64> {
        if self.legacy.contains(run) {
            return None;
        }
        Some(self.by_run.get(run).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_runs_are_forgotten_past_the_last_kept_and_open_ones_never() {
        let mut c = Cursors::default();
        assert!(c.advance("open", 1, false, 5));
        for i in 0..15 {
            let run = format!("r{i}");
            assert!(c.advance(&run, 1, false, 5));
            assert!(c.advance(&run, 2, true, 5));
        }
        assert_eq!(c.len(), 6, "the kept ended runs and the open one");
        assert_eq!(c.of("open"), Known::At(1));
        assert_eq!(c.of("r0"), Known::Unknown { forgotten: true });
        assert_eq!(c.of("r9"), Known::Unknown { forgotten: true });
        assert_eq!(c.of("r10"), Known::At(2));
        assert!(!c.advance("r14", 2, true, 5), "a record written twice");
        assert!(!c.advance("open", 1, false, 5));
        c.legacy("old");
        assert_eq!(c.of("old"), Known::Legacy);
        assert_eq!(
            Cursors::default().of("new"),
            Known::Unknown { forgotten: false }
        );
    }

    #[test]
    fn a_records_kind_is_its_own_not_one_its_data_holds() {
        assert!(ends_run(
            br#"{"seq":3,"at_ms":1,"kind":"run_ended","run_id":"r","event":9,"data":{}}"#
        ));
        assert!(!ends_run(
            br#"{"seq":3,"at_ms":1,"kind":"notice","run_id":"r","event":9,"data":{"kind":"run_ended"}}"#
        ));
    }
}
