//! The queue's tests: who commits (a lone run's caller, a runtime's task, the writer thread), in
//! what order, and what happens when one of them cannot.

#![allow(clippy::unwrap_used)]

use std::sync::mpsc;

use rein_core::{Durability, Event, RunStarted, StoredEvent};

use super::lock;
use crate::{Lease, OnCommit, SqliteStore, Store};

/// A store in a new directory, past its first commit (which the writer thread makes: it
/// writes the new log's header), and the lease of run `r` in it.
fn opened() -> (tempfile::TempDir, SqliteStore, Lease) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
    let first = Lease::new_run("first", "w", u64::MAX / 4);
    store
        .append(&first, &[event(1)], Durability::Normal, None)
        .wait()
        .unwrap();
    let_go(&store);
    (dir, store, Lease::new_run("r", "w", u64::MAX / 4))
}

/// Returns once the writer thread has let go of the connection (it answers its appenders
/// first: until it lets go, a caller finds the connection taken and queues) and waits for work.
/// Until it waits, it takes what it finds queued on its way back: work queued for a task, whose
/// commit a test means to see on the task's thread. (On a loaded machine the writer thread may
/// be off its CPU between the two: a test that waited only for the connection failed so, one
/// run in many, with the batch committed on the writer thread.)
fn let_go(store: &SqliteStore) {
    drop(lock(&store.queue.writer));
    while !lock(&store.queue.pending).idle {
        std::thread::yield_now();
    }
}

fn event(seq: u64) -> StoredEvent {
    let event = if seq == 1 {
        Event::RunStarted(Box::new(RunStarted {
            agent: "a".into(),
            ..RunStarted::default()
        }))
    } else {
        Event::Notice {
            kind: "k".into(),
            subject: "s".into(),
            detail: format!("event {seq}"),
            call_id: None,
        }
    };
    StoredEvent {
        seq,
        at_ms: seq,
        event,
    }
}

/// A commit hook that tells `threads` which thread committed.
fn tell(threads: &mpsc::Sender<String>) -> OnCommit {
    let threads = threads.clone();
    Box::new(move |ok| {
        assert!(ok, "the append failed");
        let me = std::thread::current();
        let _ = threads.send(me.name().unwrap_or("unnamed").to_owned());
    })
}

/// Appends event `seq` of run `r`, telling `threads` which thread committed it.
fn put(
    store: &SqliteStore,
    lease: &Lease,
    seq: u64,
    durability: Durability,
    threads: &mpsc::Sender<String>,
) -> crate::Commit {
    store.append(lease, &[event(seq)], durability, Some(tell(threads)))
}

fn here() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned()
}

#[test]
fn a_lone_runs_appends_commit_on_its_thread_and_runs_at_once_share_the_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
    let lease = Lease::new_run("r", "w", u64::MAX / 4);
    let (threads, committed_on) = mpsc::channel();
    let one = store.driving();
    // A new store's first commit writes the log's header, which SQLite flushes to disk even
    // at `synchronous = NORMAL`: the writer thread makes it.
    let commit = put(&store, &lease, 1, Durability::Normal, &threads);
    commit.wait().unwrap();
    assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
    let_go(&store);
    let commit = put(&store, &lease, 2, Durability::Normal, &threads);
    // Committed before the call returned, on this thread.
    assert_eq!(committed_on.try_recv().unwrap(), here());
    commit.wait().unwrap();
    // A flush to disk is not waited for on a caller's thread (a request's, in a server).
    let commit = put(&store, &lease, 3, Durability::Fsync, &threads);
    commit.wait().unwrap();
    assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
    // Two runs driven at once: their appends go to the writer thread, to share its commits.
    let two = store.driving();
    let commit = put(&store, &lease, 4, Durability::Normal, &threads);
    commit.wait().unwrap();
    assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
    drop(two);
    drop(one);
    let seqs: Vec<u64> = store.events("r").unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[test]
fn a_lone_run_commits_what_was_queued_before_its_append_first_in_order() {
    let (_dir, store, lease) = opened();
    let (threads, committed_on) = mpsc::channel();
    lock(&store.queue.pending).paused = true;
    // Queued (two runs driven), and left there by the writer thread.
    let (one, two) = (store.driving(), store.driving());
    let first = put(&store, &lease, 1, Durability::Normal, &threads);
    assert!(committed_on.try_recv().is_err(), "committed while queued");
    drop(two);
    // The run is alone now: its next append takes the queued one with it, first. (Taken in
    // the other order, the second would be refused: its log would not begin at 1.)
    let second = put(&store, &lease, 2, Durability::Normal, &threads);
    assert_eq!(committed_on.try_recv().unwrap(), here());
    assert_eq!(committed_on.try_recv().unwrap(), here());
    first.wait().unwrap();
    second.wait().unwrap();
    drop(one);
    lock(&store.queue.pending).paused = false;
    let seqs: Vec<u64> = store.events("r").unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
}

#[test]
fn a_lone_runs_append_goes_to_the_writer_while_another_process_holds_the_database() {
    let (dir, store, lease) = opened();
    let (threads, committed_on) = mpsc::channel();
    let _one = store.driving();
    // Another process's write transaction.
    let other = rusqlite::Connection::open(dir.path().join("rein.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The call returns at once: the caller's thread does not wait for the lock.
    let commit = put(&store, &lease, 1, Durability::Normal, &threads);
    assert!(
        committed_on.try_recv().is_err(),
        "committed past another's lock"
    );
    other.execute_batch("COMMIT").unwrap();
    commit.wait().unwrap();
    assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
    assert_eq!(store.events("r").unwrap().len(), 1);
}

/// Four runs appending at once from threads of their own, unwaited: the first half of each
/// log while all four are driven (the writer thread commits, yielding before each batch),
/// the rest once only one is (appends may then commit on their callers' threads, taking
/// what is queued, while the writer may be yielding). Every append commits, and each log is
/// in order: an append taken out of order would be refused, its sequence not following its
/// log's last.
#[test]
fn runs_appending_at_once_commit_everything_in_order_across_the_writers_yields() {
    let (_dir, store, _) = opened();
    let store = std::sync::Arc::new(store);
    const EVENTS: u64 = 300;
    let runs = ["a", "b", "c", "d"];
    let mut drivers: Vec<_> = runs.iter().map(|_| store.driving()).collect();
    let halfway = std::sync::Arc::new(std::sync::Barrier::new(runs.len() + 1));
    let threads: Vec<_> = runs
        .iter()
        .map(|run| {
            let (store, halfway) = (store.clone(), halfway.clone());
            let lease = Lease::new_run(run, "w", u64::MAX / 4);
            std::thread::spawn(move || {
                let append = |seq| store.append(&lease, &[event(seq)], Durability::Normal, None);
                let mut commits: Vec<_> = (1..=EVENTS / 2).map(append).collect();
                halfway.wait();
                halfway.wait();
                commits.extend((EVENTS / 2 + 1..=EVENTS).map(append));
                commits.into_iter().map(|c| c.wait()).collect::<Vec<_>>()
            })
        })
        .collect();
    halfway.wait();
    drivers.truncate(1);
    halfway.wait();
    for (run, thread) in runs.iter().zip(threads) {
        let results = thread.join().unwrap();
        assert!(
            results.iter().all(Result::is_ok),
            "an append of {run} failed"
        );
        let seqs: Vec<u64> = store.events(run).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=EVENTS).collect::<Vec<_>>(), "the log of {run}");
    }
}

#[test]
fn a_writer_thread_that_panicked_answers_later_appends_and_lets_the_store_close() {
    let (_dir, store, lease) = opened();
    let (one, two) = (store.driving(), store.driving());
    let boom: OnCommit = Box::new(|_| panic!("a hook panicked"));
    let commit = store.append(&lease, &[event(1)], Durability::Normal, Some(boom));
    // Its appender learns the store is gone rather than waiting for good...
    assert!(matches!(commit.wait(), Err(crate::StoreError::Closed)));
    // ... and so does every later one, on either path.
    let later = store.append(&lease, &[event(2)], Durability::Normal, None);
    assert!(matches!(later.wait(), Err(crate::StoreError::Closed)));
    drop(two);
    let later = store.append(&lease, &[event(2)], Durability::Normal, None);
    assert!(matches!(later.wait(), Err(crate::StoreError::Closed)));
    drop(one);
    // Dropping the store returns (its writer and checkpointer threads have ended).
    drop(store);
}

/// A runtime with one worker thread, `worker`, as `rein serve` has on one CPU.
fn one_worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("worker")
        .build()
        .unwrap()
}

/// Runs driven at once by tasks of a runtime: each task's append waits for a task that the
/// first of them spawned, which lets the others append first and then commits them all, on the
/// worker's thread: not the writer thread's, and in one commit. Every commit hook, run once its
/// append is committed, finds all eight appends there.
#[test]
fn runs_at_once_in_a_runtime_share_a_commit_made_by_its_worker_not_by_the_writer_thread() {
    let (dir, store, _) = opened();
    let store = std::sync::Arc::new(store);
    let drivers: Vec<_> = (0..8).map(|_| store.driving()).collect();
    let db = dir.path().join("rein.db");
    let (seen, saw) = mpsc::channel();
    let runtime = one_worker();
    runtime
        .block_on(runtime.spawn({
            let store = store.clone();
            async move {
                let mut tasks = tokio::task::JoinSet::new();
                for run in 0..8 {
                    let (store, db, seen) = (store.clone(), db.clone(), seen.clone());
                    tasks.spawn(async move {
                        let lease = Lease::new_run(&format!("run{run}"), "w", u64::MAX / 4);
                        let hook: OnCommit = Box::new(move |ok| {
                            let reader = rusqlite::Connection::open(&db).unwrap();
                            let events: i64 = reader
                                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                                .unwrap();
                            let _ = seen.send((ok, here(), events));
                        });
                        store
                            .append(&lease, &[event(1)], Durability::Normal, Some(hook))
                            .await
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.unwrap().unwrap();
                }
            }
        }))
        .unwrap();
    drop(drivers);
    let seen: Vec<_> = saw.try_iter().collect();
    assert_eq!(seen.len(), 8);
    for (ok, thread, events) in seen {
        assert!(ok, "an append failed");
        assert_eq!(thread, "worker", "committed on the wrong thread");
        // The store's first event, and the eight runs' first.
        assert_eq!(events, 9, "the appends did not share a commit");
    }
}

/// An append queued for a task of a runtime that shuts down before the task's turn (it is
/// dropped, unrun) is committed by the writer thread: nothing queued is left behind.
#[test]
fn an_append_queued_for_a_runtime_that_shut_down_first_is_committed_by_the_writer_thread() {
    let (_dir, store, lease) = opened();
    let store = std::sync::Arc::new(store);
    let (threads, committed_on) = mpsc::channel();
    let (one, two) = (store.driving(), store.driving());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Made by a task, handed out, and the runtime left before the task that would commit it
    // has had its turns (it yields at least twice first).
    // (In a tuple: the commit is handed out, not waited for.)
    let made = runtime.spawn({
        let store = store.clone();
        async move { (put(&store, &lease, 1, Durability::Normal, &threads),) }
    });
    let (commit,) = runtime.block_on(made).unwrap();
    {
        let pending = lock(&store.queue.pending);
        assert!(pending.flusher.is_some(), "no task to commit it");
        assert_eq!(pending.work.len(), 1, "not queued for the task");
    }
    assert!(committed_on.try_recv().is_err(), "committed at once");
    drop(runtime);
    let on = committed_on.recv_timeout(std::time::Duration::from_secs(60));
    assert_eq!(on.as_deref(), Ok("rein-store-writer"), "left behind");
    commit.wait().unwrap();
    drop((one, two));
    let seqs: Vec<u64> = store.events("r").unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1]);
}

/// A task's append waits for no other thread's task: while the thread whose task is to commit
/// the queue is kept busy (here, blocked by one of its tasks), an append from a task on
/// another thread wakes the writer thread, which commits both.
#[test]
fn an_append_from_another_thread_does_not_wait_for_a_busy_threads_commit() {
    let (_dir, store, _) = opened();
    let store = std::sync::Arc::new(store);
    let (threads, committed_on) = mpsc::channel();
    let (one, two) = (store.driving(), store.driving());
    let (appended, wait_appended) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let busy = std::thread::spawn({
        let (store, threads) = (store.clone(), threads.clone());
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(runtime.spawn(async move {
                let lease = Lease::new_run("a", "w", u64::MAX / 4);
                let commit = put(&store, &lease, 1, Durability::Normal, &threads);
                appended.send(()).unwrap();
                // This thread's only worker is kept from running anything else meanwhile.
                released.recv().unwrap();
                commit.await
            }))
        }
    });
    wait_appended.recv().unwrap();
    let other = std::thread::spawn({
        let store = store.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(runtime.spawn(async move {
                let lease = Lease::new_run("b", "w", u64::MAX / 4);
                put(&store, &lease, 1, Durability::Normal, &threads).await
            }))
        }
    });
    for _ in 0..2 {
        let on = committed_on.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(on.as_deref(), Ok("rein-store-writer"), "kept waiting");
    }
    other.join().unwrap().unwrap().unwrap();
    release.send(()).unwrap();
    busy.join().unwrap().unwrap().unwrap();
    drop((one, two));
    for run in ["a", "b"] {
        assert_eq!(store.events(run).unwrap().len(), 1, "the log of {run}");
    }
}

/// Eight runs appending at once from tasks on two workers, each append waited for, every
/// fifth asking for a flush to disk (which is the writer thread's to commit, with whatever is
/// queued before it), and some not waited for at all: tasks on both workers queue and commit
/// for each other, and the writer thread for both. Every append commits and each log is in
/// order (an append taken out of order would be refused, its sequence not following its
/// log's last).
#[test]
fn runs_at_once_on_two_workers_commit_everything_in_order_with_the_writer_thread() {
    let (_dir, store, _) = opened();
    let store = std::sync::Arc::new(store);
    const EVENTS: u64 = 120;
    let runs: Vec<String> = (0..8).map(|i| format!("run{i}")).collect();
    let drivers: Vec<_> = runs.iter().map(|_| store.driving()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let tasks: Vec<_> = runs
        .iter()
        .map(|run| {
            let (store, lease) = (store.clone(), Lease::new_run(run, "w", u64::MAX / 4));
            runtime.spawn(async move {
                for seq in 1..=EVENTS {
                    let durability = if seq % 5 == 0 {
                        Durability::Fsync
                    } else {
                        Durability::Normal
                    };
                    let commit = store.append(&lease, &[event(seq)], durability, None);
                    // Every third is left to commit with the next.
                    if seq % 3 != 0 || seq == EVENTS {
                        commit.await?;
                    }
                }
                Ok::<_, crate::StoreError>(())
            })
        })
        .collect();
    for (run, task) in runs.iter().zip(tasks) {
        runtime.block_on(task).unwrap().unwrap();
        let seqs: Vec<u64> = store.events(run).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=EVENTS).collect::<Vec<_>>(), "the log of {run}");
    }
    drop(drivers);
}

/// Runs `appends` on a one-thread runtime, each appending event `seq` of its run and telling
/// `threads` which thread committed it, and returns their commits (not waited for) once the
/// task that was to commit them has had its turn.
fn queued_by_tasks(
    store: &std::sync::Arc<SqliteStore>,
    appends: &[(&str, u64)],
    threads: &mpsc::Sender<String>,
) -> Vec<crate::Commit> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let appends: Vec<(String, u64)> = appends.iter().map(|(r, s)| ((*r).to_owned(), *s)).collect();
    let (store, threads) = (store.clone(), threads.clone());
    runtime.block_on(async move {
        let mut made = tokio::task::JoinSet::new();
        for (run, seq) in appends {
            let (store, threads) = (store.clone(), threads.clone());
            made.spawn(async move {
                let lease = Lease::new_run(&run, "w", u64::MAX / 4);
                (put(&store, &lease, seq, Durability::Normal, &threads),)
            });
        }
        let mut commits = Vec::new();
        while let Some(done) = made.join_next().await {
            commits.push(done.unwrap().0);
        }
        // The task that commits them yields a few times first; its turn is over once it has
        // let go of the queue.
        while lock(&store.queue.pending).flusher.is_some() {
            tokio::task::yield_now().await;
        }
        commits
    })
}

/// A task's commit finds another process holding the database: it does not wait for it on the
/// worker's thread; it hands the batch back to the writer thread, which commits all of it, in
/// order, once the other process lets go. Nothing is lost or committed twice.
#[test]
fn runs_at_once_hand_their_batch_to_the_writer_thread_while_another_process_holds_the_database() {
    let (dir, store, _) = opened();
    let store = std::sync::Arc::new(store);
    let (threads, committed_on) = mpsc::channel();
    let drivers = (store.driving(), store.driving());
    let other = rusqlite::Connection::open(dir.path().join("rein.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let commits = queued_by_tasks(&store, &[("a", 1), ("b", 1), ("c", 1)], &threads);
    assert!(
        committed_on.try_recv().is_err(),
        "committed past another's lock"
    );
    other.execute_batch("COMMIT").unwrap();
    for commit in commits {
        commit.wait().unwrap();
    }
    let on: Vec<String> = committed_on.try_iter().collect();
    assert_eq!(
        on, ["rein-store-writer"; 3],
        "handed back to the writer thread"
    );
    drop(drivers);
    for run in ["a", "b", "c"] {
        let seqs: Vec<u64> = store.events(run).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1], "the log of {run}");
    }
}

/// A task's commit finds the connection taken (by the writer thread, in the middle of a batch):
/// it leaves the queue to the writer thread, which takes it once it lets go.
#[test]
fn a_tasks_commit_that_finds_the_connection_taken_leaves_the_queue_to_the_writer_thread() {
    let (_dir, store, _) = opened();
    let store = std::sync::Arc::new(store);
    let (threads, committed_on) = mpsc::channel();
    let drivers = (store.driving(), store.driving());
    let taken = lock(&store.queue.writer);
    let commits = queued_by_tasks(&store, &[("a", 1), ("b", 1)], &threads);
    assert!(
        committed_on.try_recv().is_err(),
        "committed without the connection"
    );
    assert_eq!(
        lock(&store.queue.pending).work.len(),
        2,
        "the queue was dropped"
    );
    drop(taken);
    for commit in commits {
        commit.wait().unwrap();
    }
    let on: Vec<String> = committed_on.try_iter().collect();
    assert_eq!(on, ["rein-store-writer"; 2]);
    drop(drivers);
    for run in ["a", "b"] {
        assert_eq!(store.events(run).unwrap().len(), 1, "the log of {run}");
    }
}

/// The other runs end while a task's commit is on its way: the run left alone commits on its
/// own thread at once, taking what the task was to commit with it, first and in order; the task
/// then finds nothing to commit (an append committed twice would be refused, and fail its
/// hook).
#[test]
fn a_run_left_alone_commits_what_a_task_was_to_commit_first_and_in_order() {
    let (_dir, store, lease) = opened();
    let store = std::sync::Arc::new(store);
    let (threads, committed_on) = mpsc::channel();
    let (one, two) = (store.driving(), store.driving());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Queued by a task for a commit whose turn has not come.
    let made = runtime.spawn({
        let (store, lease, threads) = (store.clone(), lease.clone(), threads.clone());
        async move { (put(&store, &lease, 1, Durability::Normal, &threads),) }
    });
    let (first,) = runtime.block_on(made).unwrap();
    assert!(
        lock(&store.queue.pending).flusher.is_some(),
        "no task to commit it"
    );
    drop(two);
    // The run is alone now: its next append, from a thread of its own, commits both, here.
    let second = put(&store, &lease, 2, Durability::Normal, &threads);
    assert_eq!(committed_on.try_recv().as_deref(), Ok(here().as_str()));
    assert_eq!(committed_on.try_recv().as_deref(), Ok(here().as_str()));
    // The task has its turn now, and finds the queue empty.
    runtime.block_on(async {
        while lock(&store.queue.pending).flusher.is_some() {
            tokio::task::yield_now().await;
        }
    });
    first.wait().unwrap();
    second.wait().unwrap();
    assert!(committed_on.try_recv().is_err(), "committed twice");
    drop(one);
    let seqs: Vec<u64> = store.events("r").unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
}

/// The writer forgets a run once the run lets its lease go (it ended or suspended), so a
/// process that serves a run per request does not grow with every run it ever wrote; and what
/// it forgot is read from the file again: the ended run's old lease stays refused, and a
/// suspended run taken up again under a new lease goes on where it was.
#[test]
fn the_writer_forgets_runs_that_let_their_lease_go_and_still_checks_them() {
    use rein_core::EndState;
    let (_dir, store, _) = opened();
    let end = |seq| StoredEvent {
        seq,
        at_ms: seq,
        event: Event::RunEnded {
            status: EndState::Completed,
            output: None,
            reason: None,
            call_id: None,
        },
    };
    for i in 0..50 {
        let lease = Lease::new_run(&format!("ended-{i}"), "w", u64::MAX / 4);
        let events = [event(1), event(2), end(3)];
        store
            .append(&lease, &events, Durability::Normal, None)
            .wait()
            .unwrap();
    }
    let suspended = Lease::new_run("suspended", "w", u64::MAX / 4);
    let suspend = StoredEvent {
        seq: 2,
        at_ms: 2,
        event: Event::RunSuspended {
            approvals: vec!["a".into()],
        },
    };
    store
        .append(&suspended, &[event(1), suspend], Durability::Normal, None)
        .wait()
        .unwrap();
    let open = Lease::new_run("open", "w", u64::MAX / 4);
    store
        .append(&open, &[event(1)], Durability::Normal, None)
        .wait()
        .unwrap();
    // The first run and the open one, which still hold their leases.
    let remembered = lock(&store.queue.writer)
        .as_ref()
        .map(|w| w.runs_remembered());
    assert_eq!(remembered, Some(2));
    let old = Lease::new_run("ended-7", "w", u64::MAX / 4);
    let refused = store
        .append(&old, &[event(4)], Durability::Normal, None)
        .wait();
    assert!(
        matches!(refused, Err(crate::StoreError::Conflict { .. })),
        "an append under an ended run's lease: {refused:?}"
    );
    let taken = store
        .acquire_lease("suspended", "v", u64::MAX / 4, 0, &|_| false)
        .unwrap();
    store
        .append(&taken, &[event(3)], Durability::Normal, None)
        .wait()
        .unwrap();
    let stale = store
        .append(&suspended, &[event(4)], Durability::Normal, None)
        .wait();
    assert!(stale.is_err(), "the suspended run's old lease: {stale:?}");
    assert_eq!(store.events("suspended").unwrap().len(), 3);
}
