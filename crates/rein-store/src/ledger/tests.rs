//! The ledger's tests: limits under reservations and admissions, and its writes' group commit
//! by the store's writer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use rein_core::{Durability, Event, StoredEvent};

use super::*;
use crate::{Lease, SqliteStore, Store};

const TTL: u64 = 60_000;

/// Holds the store's writer inside a ledger write until the sender is used (or dropped): what is
/// queued meanwhile forms the next batch together. Returns once the writer is inside.
fn hold_writer(ledger: &BudgetLedger) -> (Queued<()>, mpsc::Sender<()>) {
    let (entered, wait_entered) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    let gate = ledger.write(move |_| {
        entered.send(()).unwrap();
        let _ = held.recv();
        Ok(())
    });
    wait_entered.recv().unwrap();
    (gate, release)
}

/// The first event of run `run`.
fn started(run: &str) -> StoredEvent {
    StoredEvent {
        seq: 1,
        at_ms: 1,
        event: Event::RunStarted(Box::new(rein_core::RunStarted {
            agent: "a".into(),
            task: run.into(),
            ..Default::default()
        })),
    }
}

/// A store in `dir` and its ledger (which writes only while the store is open).
fn opened(dir: &std::path::Path) -> (SqliteStore, BudgetLedger) {
    let store = SqliteStore::open(dir, Durability::Normal).unwrap();
    let ledger = store.ledger().unwrap();
    (store, ledger)
}

fn line(max_tokens: u64) -> LedgerLine {
    LedgerLine {
        key: "user:ann".into(),
        period: "2026-11-23".into(),
        max_tokens: Some(max_tokens),
        max_cost_micros: None,
    }
}

#[test]
fn reservations_count_until_settled_and_never_pass_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, ledger) = opened(dir.path());
    let amount = Spend {
        tokens: 40,
        cost_micros: 0,
    };
    let a = ledger
        .reserve("r1", "r1", &[line(100)], amount, Spend::default(), TTL, 0)
        .wait()
        .unwrap()
        .unwrap();
    let _b = ledger
        .reserve("r2", "r2", &[line(100)], amount, Spend::default(), TTL, 0)
        .wait()
        .unwrap()
        .unwrap();
    // 40 + 40 held; another 40 would pass 100.
    let refused = ledger
        .reserve("r3", "r3", &[line(100)], amount, Spend::default(), TTL, 0)
        .wait()
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.reserved.tokens, 80);
    // Settling for less frees the difference.
    ledger
        .settle(
            &a,
            Spend {
                tokens: 10,
                cost_micros: 0,
            },
        )
        .wait()
        .unwrap();
    assert!(
        ledger
            .reserve("r3", "r3", &[line(100)], amount, Spend::default(), TTL, 0)
            .wait()
            .unwrap()
            .is_ok()
    );
    assert_eq!(ledger.spent(&line(100)).unwrap().tokens, 10);
    // Headroom is checked, not held.
    let headroom = Spend {
        tokens: 11,
        cost_micros: 0,
    };
    assert!(
        ledger
            .reserve("r5", "r5", &[line(100)], Spend::default(), headroom, TTL, 0)
            .wait()
            .unwrap()
            .is_err()
    );
    // Expired reservations (a dead process) stop counting.
    assert!(
        ledger
            .reserve(
                "r4",
                "r4",
                &[line(100)],
                amount,
                Spend::default(),
                TTL,
                TTL + 1
            )
            .wait()
            .unwrap()
            .is_ok()
    );
    let rows = ledger.usage("user:").unwrap();
    assert_eq!((rows.len(), rows[0].tokens, rows[0].calls), (1, 10, 1));
}

/// Holds of processes that died mid-call are deleted once a later hold on their line finds
/// them lapsed (else the table, and every reservation's reading of it, grows with each crash);
/// holds still live, and other lines', stay.
#[test]
fn lapsed_holds_are_deleted_by_the_next_hold_on_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, ledger) = opened(dir.path());
    let amount = Spend {
        tokens: 10,
        cost_micros: 0,
    };
    let other = LedgerLine {
        key: "user:bob".into(),
        ..line(100)
    };
    let hold = |run: &str, line: LedgerLine, ttl: u64, now: u64| {
        ledger
            .reserve(run, run, &[line], amount, Spend::default(), ttl, now)
            .wait()
            .unwrap()
            .unwrap()
    };
    // Three holds whose process dies (never settled): two lapse at 1 000, one at 60 000; and
    // one on another line, lapsing at 1 000 too.
    hold("dead-1", line(100), 1_000, 0);
    hold("dead-2", line(100), 1_000, 0);
    hold("alive", line(100), TTL, 0);
    hold("bob", other, 1_000, 0);
    let holders = || -> Vec<String> {
        let conn = rusqlite::Connection::open(dir.path().join("rein.db")).unwrap();
        let mut s = conn
            .prepare("SELECT run_id FROM budget_reservations ORDER BY run_id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(holders(), ["alive", "bob", "dead-1", "dead-2"]);
    // Later, a hold on the same line counts only the live one, and clears the lapsed ones.
    let refused = ledger
        .reserve(
            "next",
            "next",
            &[line(100)],
            Spend {
                tokens: 91,
                cost_micros: 0,
            },
            Spend::default(),
            TTL,
            5_000,
        )
        .wait()
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.reserved.tokens, 10);
    assert_eq!(holders(), ["alive", "bob"]);
    hold("next", line(100), TTL, 5_000);
    assert_eq!(holders(), ["alive", "bob", "next"]);
}

#[test]
fn admitted_runs_hold_their_cap_draw_on_it_and_give_back_what_they_do_not_spend() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, ledger) = opened(dir.path());
    let cap = Spend {
        tokens: 40,
        cost_micros: 0,
    };
    let shared = [line(100)];
    assert!(
        ledger
            .admit("a", &shared, cap, TTL, 0)
            .wait()
            .unwrap()
            .is_ok()
    );
    assert!(
        ledger
            .admit("b", &shared, cap, TTL, 0)
            .wait()
            .unwrap()
            .is_ok()
    );
    // Admitting again only extends the hold.
    assert!(
        ledger
            .admit("a", &shared, cap, TTL, 0)
            .wait()
            .unwrap()
            .is_ok()
    );
    let refused = ledger
        .admit("c", &shared, cap, TTL, 0)
        .wait()
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.reserved.tokens, 80);
    // A call of `a` draws on its admission: nothing more is held on the line.
    let call = ledger
        .reserve(
            "a",
            "a",
            &shared,
            Spend {
                tokens: 30,
                cost_micros: 0,
            },
            Spend::default(),
            TTL,
            1,
        )
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(call.taken[0].tokens, 30);
    assert!(
        ledger
            .admit("c", &shared, cap, TTL, 1)
            .wait()
            .unwrap()
            .is_err()
    );
    // The room it keeps for a wrap-up comes out of what its admission still holds too: 80 of
    // 100 are held (a's 10 left and its call's 30, b's 40); a call of 5 taken from a's
    // admission, with 23 of headroom of which a's last 5 cover part, fits.
    let fits = ledger
        .reserve(
            "a",
            "a",
            &shared,
            Spend {
                tokens: 5,
                cost_micros: 0,
            },
            Spend {
                tokens: 23,
                cost_micros: 0,
            },
            TTL,
            1,
        )
        .wait()
        .unwrap()
        .unwrap();
    ledger.settle(&fits, Spend::default()).wait().unwrap();
    // It spent 10 of the 30 it took: 20 go back to its admission (now 30).
    let settled = ledger
        .settle(
            &call,
            Spend {
                tokens: 10,
                cost_micros: 0,
            },
        )
        .wait()
        .unwrap();
    assert!(!settled.over_reserved);
    assert!(
        ledger
            .admit("c", &shared, cap, TTL, 2)
            .wait()
            .unwrap()
            .is_err()
    );
    // Once `a` ends, its hold is gone and only its spend counts: 10 + 40 + 40 fits.
    ledger.release_admission("a").wait().unwrap();
    assert!(
        ledger
            .admit("c", &shared, cap, TTL, 3)
            .wait()
            .unwrap()
            .is_ok()
    );
    // Holds of a dead process lapse (b's, after TTL); a live one extends them (c's).
    ledger.extend("c", TTL * 3).wait().unwrap();
    let late = ledger
        .admit(
            "d",
            &shared,
            Spend {
                tokens: 51,
                cost_micros: 0,
            },
            TTL,
            TTL * 2,
        )
        .wait()
        .unwrap();
    assert!(
        late.is_err(),
        "c's extended hold still counts: 10 + 40 + 51 > 100"
    );
    // A call beyond the admission needs room of its own; a provider that passes the cap it
    // was sent is an overrun.
    let big = ledger
        .reserve(
            "c",
            "c",
            &shared,
            Spend {
                tokens: 101,
                cost_micros: 0,
            },
            Spend::default(),
            TTL,
            TTL * 2,
        )
        .wait()
        .unwrap()
        .unwrap_err();
    assert_eq!(big.key, "user:ann");
    let small = ledger
        .reserve(
            "c",
            "c",
            &shared,
            Spend {
                tokens: 5,
                cost_micros: 0,
            },
            Spend::default(),
            TTL,
            TTL * 2,
        )
        .wait()
        .unwrap()
        .unwrap();
    let settled = ledger
        .settle(
            &small,
            Spend {
                tokens: 95,
                cost_micros: 0,
            },
        )
        .wait()
        .unwrap();
    assert!(settled.over_reserved);
    assert_eq!(settled.over_limit, vec!["user:ann 2026-11-23".to_owned()]);
}

/// Reservations queued from many threads, on the ledgers of two stores over one file (two
/// processes), each committed in batches with others: exactly as many as the limit covers are
/// granted.
#[test]
fn reservations_queued_together_never_pass_the_limit_across_writers() {
    let dir = tempfile::tempdir().unwrap();
    let (_one, first) = opened(dir.path());
    let (_two, second) = opened(dir.path());
    let ledgers = [Arc::new(first), Arc::new(second)];
    let one = Spend {
        tokens: 1,
        cost_micros: 0,
    };
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ledger = ledgers[t % 2].clone();
            std::thread::spawn(move || {
                // Queued all at once, then waited for: the writer takes them in batches.
                let queued: Vec<_> = (0..40)
                    .map(|i| {
                        let run = format!("r{t}-{i}");
                        ledger.reserve(&run, &run, &[line(100)], one, Spend::default(), TTL, 0)
                    })
                    .collect();
                queued
                    .into_iter()
                    .filter_map(|q| q.wait().unwrap().ok())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut granted = Vec::new();
    for t in threads {
        granted.extend(t.join().unwrap());
    }
    assert_eq!(granted.len(), 100, "320 asked, 100 fit");
    // Each settles for what it held: the ledger books exactly that.
    let settles: Vec<_> = granted
        .iter()
        .enumerate()
        .map(|(i, r)| ledgers[i % 2].settle(r, one))
        .collect();
    for s in settles {
        s.wait().unwrap();
    }
    assert_eq!(ledgers[0].spent(&line(100)).unwrap().tokens, 100);
    assert_eq!(ledgers[1].usage("user:").unwrap()[0].calls, 100);
}

/// A write that fails half-way, committed in one batch between two good ones, fails alone and
/// leaves nothing behind; the good ones commit.
#[test]
fn a_failing_write_in_a_batch_fails_alone_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, ledger) = opened(dir.path());
    // The writer is held inside a first write while three more are queued: they form the next
    // batch together.
    let (gate, release) = hold_writer(&ledger);
    let held_tokens = Spend {
        tokens: 30,
        cost_micros: 0,
    };
    let a = ledger.reserve(
        "a",
        "a",
        &[line(100)],
        held_tokens,
        Spend::default(),
        TTL,
        0,
    );
    let broken = ledger.write(|tx| {
        tx.execute(
            "INSERT INTO budget_reservations (key, period, tokens, cost_micros, run_id, expires_ms)
             VALUES ('user:ann', '2026-11-23', 50, 0, 'broken', 99999999)",
            [],
        )?;
        tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
        Ok(())
    });
    let c = ledger.reserve(
        "c",
        "c",
        &[line(100)],
        held_tokens,
        Spend::default(),
        TTL,
        0,
    );
    release.send(()).unwrap();
    gate.wait().unwrap();
    let a = a.wait().unwrap().unwrap();
    let failed = broken.wait().unwrap_err().to_string();
    assert!(
        failed.contains("rein.db") && failed.contains("no_such_table"),
        "{failed}"
    );
    c.wait().unwrap().unwrap();
    // 30 + 30 held; the broken write's 50 is gone, so 40 more fit and 41 do not.
    let fits = |tokens| {
        ledger
            .reserve(
                "d",
                "d",
                &[line(100)],
                Spend {
                    tokens,
                    cost_micros: 0,
                },
                Spend::default(),
                TTL,
                0,
            )
            .wait()
            .unwrap()
            .is_ok()
    };
    assert!(!fits(41));
    assert!(fits(40));
    assert_eq!(a.amount.tokens, 30);
}

/// A write queued and not waited for (a run's last release, a hold dropped on an error path)
/// is done before the store goes away: a process that ends right after leaves no hold behind.
/// A write queued once the store is closed is answered with an error, not left waiting.
#[test]
fn writes_queued_and_not_waited_for_are_done_when_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let cap = Spend {
        tokens: 100,
        cost_micros: 0,
    };
    let (store, ledger) = opened(dir.path());
    ledger
        .admit("a", &[line(100)], cap, TTL, 0)
        .wait()
        .unwrap()
        .unwrap();
    // The writer is busy when the release is queued, and the store is closed at once.
    let (gate, release) = hold_writer(&ledger);
    drop(gate);
    drop(ledger.release_admission("a"));
    let closing = std::thread::spawn(move || drop(store));
    release.send(()).unwrap();
    closing.join().unwrap();
    let conn = Connection::open(dir.path().join("rein.db")).unwrap();
    let held: i64 = conn
        .query_row(
            "SELECT count(*) FROM budget_reservations WHERE run_id = 'a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        held, 0,
        "a's admission was released before the store closed"
    );
    let late = ledger.release_admission("b").wait().unwrap_err();
    assert!(late.to_string().contains("stopped"), "{late}");
}

/// A ledger write and an append queued while the writer is busy go into one transaction: the
/// hold of a gateway request shares its run's start's commit.
#[test]
fn a_ledger_write_and_an_append_queued_together_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger) = opened(dir.path());
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = batches.clone();
    store.after_batch(Box::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        true
    }));
    let (gate, release) = hold_writer(&ledger);
    let append = store.append(
        &Lease::new_run("r1", "me", TTL),
        &[started("r1")],
        Durability::Normal,
        None,
    );
    let reserved = ledger.reserve(
        "r1",
        "r1",
        &[line(100)],
        Spend {
            tokens: 10,
            cost_micros: 0,
        },
        Spend::default(),
        TTL,
        0,
    );
    release.send(()).unwrap();
    gate.wait().unwrap();
    append.wait().unwrap();
    reserved.wait().unwrap().unwrap();
    assert_eq!(
        batches.load(Ordering::SeqCst),
        2,
        "the gate's batch, then one for the append and the reservation"
    );
    assert_eq!(store.events("r1").unwrap().len(), 1);
}

#[test]
fn lines_read_together_read_as_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, ledger) = opened(dir.path());
    let at = |key: &str, period: &str| LedgerLine {
        key: key.into(),
        period: period.into(),
        max_tokens: Some(1_000),
        max_cost_micros: None,
    };
    // Two periods of one key, another key, and a key that looks like SQL.
    let day = at("tenant:acme", "2026-12-01");
    let month = at("tenant:acme", "2026-12");
    let odd = at("user:x') OR 1=1 --", "2026-12-01");
    let never = at("run:none", "run");
    for (i, l) in [&day, &month, &odd].into_iter().enumerate() {
        let held = ledger
            .reserve(
                "r",
                "r",
                std::slice::from_ref(l),
                Spend::default(),
                Spend::default(),
                TTL,
                0,
            )
            .wait()
            .unwrap()
            .unwrap();
        let spent = Spend {
            tokens: 10 * (i as u64 + 1),
            cost_micros: i as u64,
        };
        ledger.settle(&held, spent).wait().unwrap();
    }
    let lines = [&month, &never, &odd, &day, &month];
    let together = ledger.spent_on(&lines).unwrap();
    // Each alone, by the single-line query the writer's transactions use.
    let alone: Vec<Spend> = {
        let conn = ledger.db.conn();
        lines.iter().map(|l| spent(&conn, l).unwrap()).collect()
    };
    assert_eq!(together, alone);
    assert_eq!(
        together.iter().map(|s| s.tokens).collect::<Vec<_>>(),
        [20, 0, 30, 10, 20]
    );
    assert!(ledger.spent_on(&[]).unwrap().is_empty());
}

/// Writes that go with an append keep their own fate: an append refused (a lease that is not the
/// run's) does not undo them, and one that fails does not undo the append. A prepared write
/// dropped unsent is done on its own.
#[test]
fn writes_that_go_with_an_append_keep_their_own_fate() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger) = opened(dir.path());
    let ten = Spend {
        tokens: 10,
        cost_micros: 0,
    };
    let reserve = |run: &str| {
        ledger.later(|l| l.reserve(run, run, &[line(100)], ten, Spend::default(), TTL, 0))
    };
    // Refused: a new run must start under lease token 1.
    let (writes, held) = reserve("r1");
    let mut lease = Lease::new_run("r1", "me", TTL);
    lease.token = 7;
    let refused = store.append_with(&lease, &[started("r1")], Durability::Normal, None, writes);
    assert!(refused.wait().is_err());
    held.wait().unwrap().unwrap();
    // A write that fails beside an append that commits.
    let (mut writes, broken) = ledger.later(|l| {
        l.write(|tx| {
            tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        })
    });
    let (more, held_too) = reserve("r2");
    writes.extend(more);
    store
        .append_with(
            &Lease::new_run("r2", "me", TTL),
            &[started("r2")],
            Durability::Normal,
            None,
            writes,
        )
        .wait()
        .unwrap();
    assert!(broken.wait().is_err());
    held_too.wait().unwrap().unwrap();
    assert_eq!(store.events("r2").unwrap().len(), 1);
    // Prepared and dropped: queued alone.
    let (writes, dropped) = reserve("r3");
    drop(writes);
    dropped.wait().unwrap().unwrap();
    let conn = Connection::open(dir.path().join("rein.db")).unwrap();
    let holds: i64 = conn
        .query_row("SELECT count(*) FROM budget_reservations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(holds, 3);
}
