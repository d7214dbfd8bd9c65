//! What is kept of each gateway conversation in the state directory (`conversations.sqlite`,
//! through `rein_store::ConversationStore`): its labels, the runs held for it, and when a request
//! last used it; read once a request, written only when something changes (a label it had not
//! seen, a run held, released or given up, a use noted hourly), each write handing its worker
//! over first on a multi-threaded runtime, as another process may hold the file's lock.

use rein_core::{Clock, EndState};
use rein_store::{HoldAt, Store};

use super::{ConversationKey, ISSUED_KEPT, conversation_of};
use crate::runs::LoadedAgent;
use crate::{Error, Rein};

/// How often a conversation's use is noted in the store (a write): a prune, counted in days,
/// needs no finer time.
const USE_NOTED_EVERY_MS: u64 = 3_600_000;

impl Rein {
    /// Notes, at most hourly, that a request uses a conversation that keeps labels or held runs,
    /// so a prune (of those unused for days) never takes the labels of one in use. Logged if it
    /// fails: the request goes on, and the next one tries again.
    pub(super) fn note_use(&self, key: &ConversationKey, kept: &rein_store::Conversation) {
        if kept.labels.is_empty() && kept.held.is_empty() {
            return;
        }
        let at = now();
        {
            let Ok(mut used) = self.held.used.lock() else {
                return;
            };
            if used
                .get(key)
                .is_some_and(|last| at.saturating_sub(*last) < USE_NOTED_EVERY_MS)
            {
                return;
            }
            if used.len() >= ISSUED_KEPT {
                used.clear();
            }
            used.insert(key.clone(), at);
        }
        let noted = self
            .conversations()
            .and_then(|store| Ok(may_block(|| store.used(key.as_ref(), at))?));
        if let Err(e) = noted {
            tracing::error!(
                conversation = %key.conversation,
                error = %e,
                "the use of a gateway conversation could not be noted"
            );
            // The next request tries again, not the next in an hour.
            if let Ok(mut used) = self.held.used.lock()
                && used.get(key) == Some(&at)
            {
                used.remove(key);
            }
        }
    }

    /// What is kept of the conversation (its labels and held runs), read once a request, after
    /// this process has found the gateway's held runs in the store.
    pub(super) fn kept(
        &self,
        loaded: &LoadedAgent,
        key: &ConversationKey,
    ) -> Result<rein_store::Conversation, Error> {
        self.scan_held(loaded)?;
        Ok(self.conversations()?.get(key.as_ref())?)
    }

    /// The labels the conversation's earlier requests saw (`carried`, read from the state
    /// directory this request: another process serving the same conversation may have added
    /// some). The labels of the `results` the client sends back are added to those kept first,
    /// before anything of the request is recorded: a later request whose client has dropped
    /// those results (or that reaches another process, or this one restarted) is judged with
    /// them, and a failure to keep them fails this request before it has done anything.
    /// Answers the carried labels, and all the conversation is now known to have kept.
    pub(super) fn carried(
        &self,
        key: &ConversationKey,
        agent: &rein_engine::Agent,
        carried: Vec<String>,
        results: &[(String, String, serde_json::Value)],
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        let mut seen: Vec<String> = Vec::new();
        for (_, tool, _) in results {
            for label in rein_engine::Engine::gateway_labels(agent, tool) {
                if !carried.contains(&label) && !seen.contains(&label) {
                    seen.push(label);
                }
            }
        }
        if seen.is_empty() {
            return Ok((carried.clone(), carried));
        }
        let store = self.conversations()?;
        let known = may_block(|| store.add_labels(key.as_ref(), &seen, now()))?;
        Ok((carried, known))
    }

    /// Keeps the labels a request of the conversation ended with, of those not `known` to be
    /// kept already. Its input's labels were kept before it ran (`carried`), so this normally
    /// reads and writes nothing; the request is recorded and answered by now, so a failure here
    /// is logged rather than turning a served answer (calls handed over, an approval used) into
    /// an error its client would retry.
    pub(super) fn keep_labels(&self, key: &ConversationKey, labels: &[String], known: &[String]) {
        let fresh: Vec<String> = labels
            .iter()
            .filter(|l| !known.contains(l))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return;
        }
        let kept = self
            .conversations()
            .and_then(|store| Ok(may_block(|| store.add_labels(key.as_ref(), &fresh, now()))?));
        if let Err(e) = kept {
            tracing::error!(
                conversation = %key.conversation,
                error = %e,
                "the labels of a gateway conversation could not be kept"
            );
        }
    }

    /// Holds run `run_id` for the conversation's next request; whether the conversation holds
    /// it (not if it was given up). The run is recorded (suspended) by now and its request
    /// about to be answered, so a failure is logged rather than answered (and counts as held),
    /// and this process reads the gateway's held runs from the store again at its next request
    /// (`scan_held`), which keeps the run again.
    pub(super) fn hold(&self, key: &ConversationKey, run_id: &str, at: HoldAt) -> bool {
        let held = self
            .conversations()
            .and_then(|store| Ok(may_block(|| store.hold(key.as_ref(), run_id, at, now()))?));
        let e = match held {
            Ok(holds) => return holds,
            Err(e) => e,
        };
        tracing::error!(
            conversation = %key.conversation,
            run = %run_id,
            error = %e,
            "a gateway run held for approval could not be kept for its conversation"
        );
        if let Ok(mut scanned) = self.held.scanned.lock() {
            scanned.retain(|a| *a != key.agent);
        }
        true
    }

    /// Gives run `run_id` up: no later request could resume it, so none is answered from it,
    /// even after a process start finds it in the store still waiting. Logged if it fails (the
    /// run is released already; a process start would hold it, and fail, once more).
    pub(super) fn give_up(&self, key: &ConversationKey, run_id: &str) {
        let given = self
            .conversations()
            .and_then(|store| Ok(may_block(|| store.give_up(key.as_ref(), run_id, now()))?));
        if let Err(e) = given {
            tracing::error!(run = %run_id, error = %e, "a held gateway run could not be given up");
        }
    }

    /// Releases run `run_id`; whether it was held (and so is this request's to resume). With
    /// the digest of the request that resumes it, the same request sent again is answered from
    /// the run (see `answered_again`).
    pub(super) fn release_held(
        &self,
        key: &ConversationKey,
        run_id: &str,
        request: Option<&str>,
    ) -> Result<bool, Error> {
        let store = self.conversations()?;
        Ok(may_block(|| match request {
            Some(request) => store.release_to(key.as_ref(), run_id, request, now()),
            None => store.release(key.as_ref(), run_id, now()),
        })?)
    }

    /// The conversation moved on from the run its last request resumed: no later request is
    /// answered from it again. Logged if it fails (the next request that differs tries again).
    pub(super) fn moved_on(&self, key: &ConversationKey, run_id: &str) {
        let moved = self
            .conversations()
            .and_then(|store| Ok(may_block(|| store.moved_on(key.as_ref(), run_id, now()))?));
        if let Err(e) = moved {
            tracing::error!(run = %run_id, error = %e, "a gateway conversation could not move on from a resumed run");
        }
    }

    /// Reads the agent's held runs from the store once per process and keeps each for its
    /// conversation (again, if it was already): a run whose holding was lost (a crash between
    /// its suspension and its keeping, a database written by an older rein) is found again.
    pub(super) fn scan_held(&self, loaded: &LoadedAgent) -> Result<(), Error> {
        {
            let scanned = self
                .held
                .scanned
                .lock()
                .map_err(|_| Error::Internal("the held-runs lock is poisoned".into()))?;
            if scanned.iter().any(|a| a == loaded.name()) {
                return Ok(());
            }
        }
        let filter = rein_store::RunFilter {
            limit: 10_000,
            agent: Some(loaded.name().to_owned()),
            status: Some(Some(EndState::AwaitingApproval)),
            ..Default::default()
        };
        let store = self.store()?;
        let mut found = Vec::new();
        for run in store.list_runs(&filter)? {
            // A run whose log cannot be read (damaged, or a newer rein's) is left out: one such
            // run must not fail every request of the gateway.
            let events = match store.events(&run.id) {
                Ok(events) => events,
                Err(
                    e @ (rein_store::StoreError::Corrupt { .. }
                    | rein_store::StoreError::NewerEvent { .. }),
                ) => {
                    tracing::error!(run = %run.id, error = %e, "a gateway run waiting for approval cannot be read; it is not held");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let conversation = conversation_of(&events);
            let started = events.first().and_then(|e| match &e.event {
                rein_core::Event::RunStarted(s) => Some(s.clone()),
                _ => None,
            });
            if let (Some(conversation), Some(s)) = (conversation, started) {
                let key = ConversationKey {
                    tenant: s.tenant,
                    user: s.user,
                    agent: s.agent,
                    conversation,
                };
                found.push((key, run.id, run.created_ms));
            }
        }
        // Oldest first, as they were held.
        found.sort_by_key(|(_, _, at)| *at);
        let mut scanned = self
            .held
            .scanned
            .lock()
            .map_err(|_| Error::Internal("the held-runs lock is poisoned".into()))?;
        if scanned.iter().any(|a| a == loaded.name()) {
            return Ok(());
        }
        scanned.push(loaded.name().to_owned());
        // (A holding that fails takes the agent off the list again: not under its lock.)
        drop(scanned);
        for (key, run, _) in found {
            self.hold(&key, &run, HoldAt::InOrder);
        }
        Ok(())
    }
}

/// Milliseconds since the epoch, by the engine's system clock.
pub(super) fn now() -> u64 {
    rein_engine::SystemClock.now_ms()
}

/// Runs `f`, a write of the conversations' file, which may wait for another process's lock (up
/// to the store's busy timeout): on a multi-threaded runtime the worker is handed over first
/// (`block_in_place`), so the requests queued on it go on elsewhere meanwhile. Writes are rare
/// (a label a conversation had not seen, a run held or released, a use noted hourly): a request
/// that changes nothing pays nothing.
pub(super) fn may_block<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
