//! Who drives a run: lease owners that name a process, how a dead holder is recognised, and the
//! heartbeat that renews a lease (and the run's budget holds) while the run goes.
//!
//! An owner is `<host>/<pid namespace>/<pid>/<process start>/<nonce>`. A holder whose lease has
//! not lapsed is live unless it names a process in this machine's (and this PID namespace's)
//! process table that no longer exists, or a process that has since been replaced by another with
//! the same pid: then it was killed, and its lease is taken over at once instead of after its
//! expiry. Holders on other machines are trusted until their lease lapses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rein_store::{BudgetLedger, Lease, Store};

use rein_core::Clock;

/// How long a lease lasts unless renewed.
pub const LEASE_TTL_MS: u64 = 30_000;

/// How often a driver renews its lease (and extends its budget holds).
const RENEW_EVERY: Duration = Duration::from_millis(LEASE_TTL_MS / 3);

/// This process: `<host>/<pid namespace>/<pid>/<start>`.
fn this_process() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        format!(
            "{}/{}/{pid}/{}",
            host(),
            pid_namespace(),
            start_time(pid).unwrap_or_default()
        )
    })
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace('/', "_"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|p| {
            p.to_string_lossy()
                .trim_start_matches("pid:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .ok()
        })
        .map(|n| n.to_string())
        .unwrap_or_else(|| "0".into())
}

/// When process `pid` started (clock ticks since boot), from `/proc/<pid>/stat`; `None` if there
/// is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: read after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 (starttime) is the 20th after the command name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A new owner name for one driver of one run.
pub(crate) fn new_owner() -> String {
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    format!("{}/{}", this_process(), &nonce[nonce.len() - 8..])
}

/// Whether the process an owner names is known to be gone: it ran in this PID namespace of this
/// machine and no process with its pid and start time exists now.
pub(crate) fn holder_gone(owner: &str) -> bool {
    let parts: Vec<&str> = owner.split('/').collect();
    let [host_name, ns, pid, start, _nonce] = parts[..] else {
        return false;
    };
    let mine: Vec<&str> = this_process().split('/').collect();
    if mine.len() < 2 || host_name != mine[0] || ns != mine[1] {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match start_time(pid) {
        None => true,
        Some(now) => now.to_string() != start,
    }
}

/// What a driver learns from its heartbeat.
#[derive(Default)]
pub(crate) struct Beat {
    /// Someone asked for the run to be cancelled (and who).
    pub(crate) cancel: Mutex<Option<String>>,
    /// The lease was taken over: every later append of this driver is refused anyway; the driver
    /// stops at its next step.
    pub(crate) lost: AtomicBool,
}

impl Beat {
    /// Who asked for the run to be cancelled, if anyone has.
    pub(crate) fn cancelled_by(&self) -> Option<String> {
        self.cancel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Asks for a cancellation (from this process).
    pub(crate) fn request_cancel(&self, by: &str) {
        let mut cancel = self
            .cancel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cancel.get_or_insert_with(|| by.to_owned());
    }
}

/// Renews a lease in the background while a run is driven; stopped when dropped.
pub(crate) struct Heartbeat {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts renewing `lease` every ten seconds, and extending the budget holds of `holders`
    /// (the run, and the root of its tree, whose admission it draws on).
    pub(crate) fn start(
        store: Arc<dyn Store>,
        ledger: Option<Arc<BudgetLedger>>,
        lease: Lease,
        holders: Vec<String>,
        clock: Arc<dyn Clock>,
        beat: Arc<Beat>,
    ) -> Heartbeat {
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let now = clock.now_ms();
                match store.renew_lease(&lease, LEASE_TTL_MS, now) {
                    Ok(renewed) => {
                        if let Some(by) = renewed.cancel_requested {
                            beat.request_cancel(&by);
                        }
                    }
                    Err(rein_store::StoreError::Conflict { .. }) => {
                        beat.lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A busy or failing database: try again at the next beat.
                    Err(_) => {}
                }
                if let Some(ledger) = &ledger {
                    for run in &holders {
                        let _ = ledger.extend(run, now + LEASE_TTL_MS).await;
                    }
                }
            }
        });
        Heartbeat { task: Some(task) }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_live_and_a_dead_or_replaced_one_is_gone() {
        let me = new_owner();
        assert!(!holder_gone(&me), "{me}");
        assert_ne!(new_owner(), me, "every driver has its own owner name");
        let parts: Vec<&str> = me.split('/').collect();
        // A pid that does not exist (pid_max is below 2^22).
        let dead = format!("{}/{}/{}/1/x", parts[0], parts[1], 1u32 << 30);
        assert!(holder_gone(&dead));
        // Our pid with another start time: the process was replaced.
        let replaced = format!("{}/{}/{}/1/x", parts[0], parts[1], parts[2]);
        assert!(holder_gone(&replaced));
        // Another machine, or something that is not an owner: trusted until its lease lapses.
        assert!(!holder_gone(&format!(
            "elsewhere/{}/{}/1/x",
            parts[1],
            1u32 << 30
        )));
        assert!(!holder_gone("writer-1"));
    }
}
