//! Tests of the run state machine: folds of whole logs, every prefix of a log (which is what a
//! crash leaves behind), and logs that must be refused.

use super::*;
use crate::event::{Event, RunStarted};
use crate::gate::Verdict;
use serde_json::json;

fn started(max_steps: u32) -> Event {
    Event::RunStarted(Box::new(RunStarted {
        token: None,
        agent: "a".into(),
        agent_dir: None,
        agent_digest: "d".into(),
        workspace: "/w".into(),
        task: "do it".into(),
        instructions: "be good".into(),
        provider: "scripted".into(),
        model: "m".into(),
        limits: Limits {
            max_steps,
            wall_clock_ms: 1_000,
        },
        tools: vec!["t".into()],
        user: "u".into(),
        tenant: "t".into(),
        parent: None,
        sensitive: Default::default(),
        grants: None,
        data: Default::default(),
    }))
}

fn call(id: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: "t".into(),
        arguments: json!({}),
        invalid_arguments: None,
    }
}

fn requested(step: u32) -> Event {
    Event::ModelRequested {
        step,
        attempt: 1,
        model: "m".into(),
        messages: 1,
        tools: 1,
    }
}

fn replied(step: u32, text: Option<&str>, calls: &[&str]) -> Event {
    Event::ModelReplied {
        step,
        text: text.map(str::to_owned),
        tool_calls: calls.iter().map(|c| call(c)).collect(),
        usage: Usage {
            input_tokens: 10,
            output_tokens: 2,
        },
        latency_us: 5,
        stop_reason: None,
        stop_sequence: None,
        model: "m".into(),
        cost_micros: 1,
    }
}

fn intent(id: &str, idempotent: bool, attempt: u32) -> Event {
    Event::ToolIntent {
        step: 1,
        call_id: id.into(),
        tool: "t".into(),
        args: json!({}),
        idempotent,
        attempt,
        labels: vec![],
        field_labels: Default::default(),
        data: None,
    }
}

fn outcome(id: &str) -> Event {
    Event::ToolOutcome {
        call_id: id.into(),
        ok: true,
        output: json!({"n": 1}),
        duration_us: 3,
        labels: Default::default(),
    }
}

fn log(events: Vec<Event>) -> Vec<StoredEvent> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| StoredEvent {
            seq: i as u64 + 1,
            at_ms: 100 + i as u64,
            event,
        })
        .collect()
}

fn fold(events: Vec<Event>) -> RunState {
    RunState::from_events(&log(events)).expect("a valid log")
}

/// A two-step run: one step with two tool calls, then a final answer.
fn happy_path(idempotent_second: bool) -> Vec<Event> {
    vec![
        started(5),
        requested(1),
        replied(1, Some("looking"), &["c1", "c2"]),
        intent("c1", true, 1),
        outcome("c1"),
        intent("c2", idempotent_second, 1),
        outcome("c2"),
        requested(2),
        replied(2, Some("done"), &[]),
        answered(2, Verdict::Allow, None),
        Event::RunEnded {
            status: EndState::Completed,
            output: Some("done".into()),
            reason: None,
            call_id: None,
        },
    ]
}

/// The answer of `step` judged, as "done".
fn answered(step: u32, verdict: Verdict, approved_by: Option<&str>) -> Event {
    Event::AnswerJudged {
        step,
        verdict,
        policies: vec![],
        reasons: vec!["because".into()],
        text: Some("done".into()),
        stripped: vec![],
        approved_by: approved_by.map(str::to_owned),
    }
}

#[test]
fn each_prefix_of_a_log_resumes_to_the_right_action() {
    // (events kept, the action a resumed process must take)
    let expect = |n: usize| -> Action {
        match n {
            1 => Action::CallModel { step: 1 },
            2 => Action::CallModel { step: 1 },
            3 => Action::Dispatch { call: call("c1") },
            4 => Action::Reexecute {
                call: call("c1"),
                attempt: 2,
            },
            5 => Action::Dispatch { call: call("c2") },
            6 => Action::End(Ended {
                status: EndState::NeedsReconciliation,
                output: Some("looking".into()),
                reason: None,
                call_id: Some("c2".into()),
            }),
            7 => Action::CallModel { step: 2 },
            8 => Action::CallModel { step: 2 },
            9 => Action::JudgeAnswer {
                step: 2,
                text: Some("done".into()),
            },
            10 => Action::End(Ended {
                status: EndState::Completed,
                output: Some("done".into()),
                reason: None,
                call_id: None,
            }),
            11 => Action::Finished(EndState::Completed),
            _ => unreachable!(),
        }
    };
    let events = happy_path(false);
    for n in 1..=events.len() {
        let state = fold(events[..n].to_vec());
        let mut got = state.next_action(100);
        // Reasons are prose; compare them separately.
        if let Action::End(e) = &mut got
            && e.status == EndState::NeedsReconciliation
        {
            let reason = e.reason.take().unwrap();
            assert!(
                reason.contains("c2") && reason.contains("not idempotent"),
                "{reason}"
            );
        }
        assert_eq!(got, expect(n), "after {n} events");
    }
}

#[test]
fn conversation_is_rebuilt_from_the_log() {
    let state = fold(happy_path(true));
    let msgs = state.messages();
    assert_eq!(msgs.len(), 5);
    assert_eq!(
        msgs[0],
        Message::User {
            text: "do it".into()
        }
    );
    assert!(matches!(&msgs[1], Message::Assistant { tool_calls, .. } if tool_calls.len() == 2));
    assert_eq!(
        msgs[2],
        Message::Tool {
            call_id: "c1".into(),
            name: "t".into(),
            content: "{\"n\":1}".into(),
            is_error: false
        }
    );
    assert_eq!(state.steps(), 2);
    assert_eq!(state.tool_executions(), 2);
    assert_eq!(
        state.usage(),
        Usage {
            input_tokens: 20,
            output_tokens: 4
        }
    );
}

#[test]
fn rejected_calls_go_back_to_the_model_as_errors() {
    let state = fold(vec![
        started(5),
        requested(1),
        replied(1, None, &["c1"]),
        Event::ToolRejected {
            step: 1,
            call_id: "c1".into(),
            tool: "t".into(),
            reason: "unknown tool".into(),
        },
    ]);
    assert_eq!(state.next_action(100), Action::CallModel { step: 2 });
    assert_eq!(
        state.messages().last().unwrap(),
        &Message::Tool {
            call_id: "c1".into(),
            name: "t".into(),
            content: "error: unknown tool".into(),
            is_error: true
        }
    );
}

#[test]
fn repeated_in_doubt_idempotent_call_counts_attempts() {
    let state = fold(vec![
        started(5),
        requested(1),
        replied(1, None, &["c1"]),
        intent("c1", true, 1),
        Event::RunResumed {
            attempt: 2,
            agent_changed: false,
        },
        intent("c1", true, 2),
    ]);
    assert_eq!(
        state.next_action(100),
        Action::Reexecute {
            call: call("c1"),
            attempt: 3
        }
    );
    assert_eq!(state.attempt(), 2);
}

#[test]
fn limits_end_the_run_with_partial_output() {
    let state = fold(vec![
        started(1),
        requested(1),
        replied(1, Some("half"), &["c1"]),
        intent("c1", true, 1),
        outcome("c1"),
    ]);
    match state.next_action(100) {
        Action::End(e) => {
            assert_eq!(e.status, EndState::BudgetExhausted);
            assert_eq!(e.output.as_deref(), Some("half"));
            assert!(e.reason.unwrap().contains("max_steps (1)"));
        }
        other => panic!("{other:?}"),
    }
    // Wall clock: the limit is 1000 ms of activity; the run started at 100.
    let state = fold(vec![started(5)]);
    assert_eq!(state.next_action(1_099), Action::CallModel { step: 1 });
    assert!(matches!(
        state.next_action(1_100),
        Action::End(Ended {
            status: EndState::BudgetExhausted,
            ..
        })
    ));
}

#[test]
fn active_time_excludes_the_gap_between_processes() {
    let events = vec![
        StoredEvent {
            seq: 1,
            at_ms: 0,
            event: started(5),
        },
        StoredEvent {
            seq: 2,
            at_ms: 400,
            event: requested(1),
        },
        StoredEvent {
            seq: 3,
            at_ms: 1_000_000,
            event: Event::RunResumed {
                attempt: 2,
                agent_changed: false,
            },
        },
    ];
    let state = RunState::from_events(&events).unwrap();
    assert_eq!(state.active_ms(1_000_100), 500);
    assert!(matches!(
        state.next_action(1_000_100),
        Action::CallModel { step: 1 }
    ));
}

#[test]
fn malformed_logs_are_refused_with_the_event_named() {
    let cases: Vec<(Vec<StoredEvent>, &str)> = vec![
        (log(vec![requested(1)]), "must begin with run_started"),
        (log(vec![started(5), requested(2)]), "expected step 1"),
        (
            log(vec![started(5), replied(1, None, &[])]),
            "step 1 was not requested",
        ),
        (
            log(vec![
                started(5),
                requested(1),
                replied(1, None, &["c1"]),
                outcome("c1"),
            ]),
            "no intent",
        ),
        (
            log(vec![
                started(5),
                requested(1),
                replied(1, None, &["c1"]),
                intent("c9", false, 1),
            ]),
            "no call c9",
        ),
        (
            log(vec![
                started(5),
                requested(1),
                replied(1, None, &["c1"]),
                intent("c1", false, 2),
            ]),
            "expected attempt 1",
        ),
        (
            log(vec![
                started(5),
                requested(1),
                replied(1, None, &["c1"]),
                requested(2),
            ]),
            "unfinished",
        ),
        (
            log(vec![
                started(5),
                Event::RunResumed {
                    attempt: 3,
                    agent_changed: false,
                },
            ]),
            "expected attempt 2",
        ),
        (
            log(vec![
                started(5),
                Event::RunEnded {
                    status: EndState::Failed,
                    output: None,
                    reason: None,
                    call_id: None,
                },
                requested(1),
            ]),
            "already ended",
        ),
        (
            vec![
                StoredEvent {
                    seq: 1,
                    at_ms: 0,
                    event: started(5),
                },
                StoredEvent {
                    seq: 3,
                    at_ms: 0,
                    event: requested(1),
                },
            ],
            "gap or a repeat",
        ),
    ];
    for (events, needle) in cases {
        let err = RunState::from_events(&events).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle:?}"
        );
    }
}

#[test]
fn render_output_shows_errors_and_plain_strings() {
    assert_eq!(
        render_output(false, &json!({"error": "boom"})),
        "error: boom"
    );
    assert_eq!(render_output(true, &json!("plain")), "plain");
    assert_eq!(render_output(true, &json!({"a": 1})), "{\"a\":1}");
}

fn judged(id: &str, verdict: Verdict) -> Event {
    Event::ToolJudged {
        step: 1,
        call_id: id.into(),
        tool: "t".into(),
        verdict,
        policies: vec!["p".into()],
        reasons: vec!["because".into()],
        labels: vec![],
        approved_by: None,
        provenance: Default::default(),
    }
}

fn asked(approval: &str, id: &str, expires_at_ms: Option<u64>) -> Event {
    Event::ApprovalRequested {
        approval_id: approval.into(),
        call_id: id.into(),
        tool: "t".into(),
        args: json!({}),
        policies: vec!["p".into()],
        reasons: vec!["big".into()],
        labels: vec![],
        expires_at_ms,
        provenance: Default::default(),
    }
}

fn decided(approval: &str, approved: bool) -> Event {
    Event::ApprovalDecided {
        approval_id: approval.into(),
        approved,
        by: "alice".into(),
        note: Some("ok".into()),
        expired: false,
    }
}

#[test]
fn approvals_suspend_the_run_and_are_decided_in_any_order() {
    let base = vec![
        started(5),
        requested(1),
        replied(1, None, &["c1", "c2", "c3"]),
        judged("c1", Verdict::Ask),
        asked("a1", "c1", None),
        judged("c2", Verdict::Ask),
        asked("a2", "c2", Some(500)),
        judged("c3", Verdict::Allow),
        intent("c3", true, 1),
        outcome("c3"),
    ];
    let state = fold(base.clone());
    assert_eq!(
        state.next_action(100),
        Action::Suspend {
            approvals: vec!["a1".into(), "a2".into()]
        }
    );
    let mut events = base.clone();
    events.push(Event::RunSuspended {
        approvals: vec!["a1".into(), "a2".into()],
    });
    let state = fold(events.clone());
    assert_eq!(state.next_action(100), Action::Suspended);
    assert_eq!(
        state.pending_approvals(),
        vec!["a1".to_string(), "a2".to_string()]
    );

    // Decided from another process, second one first: a2 denied, a1 approved.
    events.push(decided("a2", false));
    events.push(decided("a1", true));
    events.push(Event::RunResumed {
        attempt: 2,
        agent_changed: false,
    });
    let state = fold(events.clone());
    assert_eq!(
        state.next_action(100),
        Action::ExecuteApproved {
            call: call("c1"),
            approved_by: "alice".into()
        }
    );
    let denial = state
        .messages()
        .iter()
        .find(|m| matches!(m, Message::Tool { call_id, .. } if call_id == "c2"))
        .unwrap();
    assert!(
        matches!(denial, Message::Tool { content, is_error: true, .. } if content.contains("alice did not approve this call") && content.ends_with(": ok"))
    );
    events.push(judged("c1", Verdict::Allow));
    events.push(intent("c1", false, 1));
    events.push(outcome("c1"));
    assert_eq!(fold(events).next_action(100), Action::CallModel { step: 2 });
}

#[test]
fn undecided_approvals_expire_and_denials_reach_the_model() {
    let events = vec![
        started(5),
        requested(1),
        replied(1, None, &["c1", "c2"]),
        judged("c1", Verdict::Deny),
        judged("c2", Verdict::Ask),
        asked("a2", "c2", Some(500)),
    ];
    let state = fold(events.clone());
    assert_eq!(
        state.next_action(499),
        Action::Suspend {
            approvals: vec!["a2".into()]
        }
    );
    assert_eq!(
        state.next_action(500),
        Action::Expire {
            approval_id: "a2".into()
        }
    );
    let denied = &state.messages()[2];
    assert!(
        matches!(denied, Message::Tool { content, .. } if content == "error: denied by rein's policies (policy p): because")
    );
    let mut events = events;
    events.push(Event::ApprovalDecided {
        approval_id: "a2".into(),
        approved: false,
        by: "rein".into(),
        note: None,
        expired: true,
    });
    let state = fold(events);
    assert!(
        matches!(state.messages().last().unwrap(), Message::Tool { content, .. } if content.contains("expired"))
    );
    assert_eq!(state.next_action(600), Action::CallModel { step: 2 });
}

#[test]
fn approval_events_that_do_not_fit_are_refused() {
    let base = vec![started(5), requested(1), replied(1, None, &["c1"])];
    let cases: Vec<(Vec<Event>, &str)> = vec![
        (vec![decided("a9", true)], "no approval a9"),
        (
            vec![
                judged("c1", Verdict::Ask),
                asked("a1", "c1", None),
                decided("a1", true),
                decided("a1", false),
            ],
            "already decided",
        ),
        (
            vec![Event::RunSuspended {
                approvals: vec!["a1".into()],
            }],
            "only while calls await approval",
        ),
        (
            vec![
                judged("c1", Verdict::Ask),
                asked("a1", "c1", None),
                intent("c1", false, 1),
            ],
            "awaits approval",
        ),
    ];
    for (extra, needle) in cases {
        let mut events = base.clone();
        events.extend(extra);
        let err = RunState::from_events(&log(events)).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle:?}"
        );
    }
}

#[test]
fn untrusted_output_is_marked_and_labels_accumulate() {
    let mut untrusted_intent = intent("c1", true, 1);
    if let Event::ToolIntent { labels, .. } = &mut untrusted_intent {
        *labels = vec!["untrusted".into(), "pii".into()];
    }
    let state = fold(vec![
        started(5),
        requested(1),
        replied(1, None, &["c1", "c2"]),
        untrusted_intent,
        outcome("c1"),
        intent("c2", true, 1),
        outcome("c2"),
    ]);
    assert_eq!(
        state.labels().to_vec(),
        vec!["pii".to_string(), "untrusted".to_string()]
    );
    let msgs = state.messages();
    assert!(
        matches!(&msgs[2], Message::Tool { content, .. } if content.starts_with("<<untrusted-data tool=\"t\" call=\"c1\">>"))
    );
    assert!(matches!(&msgs[3], Message::Tool { content, .. } if content == "{\"n\":1}"));
}

#[test]
fn a_call_in_doubt_is_reconciled_and_the_run_reopens() {
    let stopped = |extra: Vec<Event>| {
        let mut events = vec![
            started(5),
            requested(1),
            replied(1, None, &["c1", "c2"]),
            intent("c1", false, 1),
        ];
        events.push(Event::RunEnded {
            status: EndState::NeedsReconciliation,
            output: None,
            reason: Some("in doubt".into()),
            call_id: Some("c1".into()),
        });
        events.extend(extra);
        events
    };
    let reconciled = |happened: bool| Event::CallReconciled {
        call_id: "c1".into(),
        happened,
        output: json!({"refund_id": "R-1"}),
        by: "ops".into(),
        note: None,
    };
    // It happened: the recorded output goes to the model and the run moves on to the next call.
    let state = fold(stopped(vec![reconciled(true)]));
    assert!(state.ended().is_none());
    assert_eq!(
        state.next_action(100),
        Action::Dispatch { call: call("c2") }
    );
    assert!(
        matches!(state.messages().last().unwrap(), Message::Tool { content, .. } if content.contains("R-1") && content.contains("confirmed by ops"))
    );
    // It did not happen: the call is judged and run again.
    assert_eq!(
        fold(stopped(vec![reconciled(false)])).next_action(100),
        Action::Dispatch { call: call("c1") }
    );
    // Only the call the run stopped on, and only once.
    let wrong = Event::CallReconciled {
        call_id: "c2".into(),
        happened: true,
        output: json!(null),
        by: "ops".into(),
        note: None,
    };
    assert!(RunState::from_events(&log(stopped(vec![wrong]))).is_err());
    assert!(
        RunState::from_events(&log(stopped(vec![reconciled(true), reconciled(true)]))).is_err()
    );
}

#[test]
fn a_call_that_stopped_without_an_outcome_is_in_doubt_until_a_person_settles_it() {
    let mut events = vec![
        started(5),
        requested(1),
        replied(1, Some("paying"), &["c1"]),
        intent("c1", false, 1),
        Event::ToolInDoubt {
            call_id: "c1".into(),
            reason: "timed out after 200 ms and was stopped".into(),
            duration_us: 200_000,
        },
    ];
    let state = fold(events.clone());
    match state.next_action(0) {
        Action::End(ended) => {
            assert_eq!(ended.status, EndState::NeedsReconciliation);
            assert_eq!(ended.call_id.as_deref(), Some("c1"));
            let reason = ended.reason.unwrap();
            assert!(
                reason.contains("stopped without a known outcome (timed out after 200 ms")
                    && reason.contains("not idempotent"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // It is not a failure the model hears about: nothing went back to it.
    assert!(
        !state
            .messages()
            .iter()
            .any(|m| matches!(m, Message::Tool { .. }))
    );
    // Settled as not having happened, the call is judged and run again.
    events.push(Event::RunEnded {
        status: EndState::NeedsReconciliation,
        output: None,
        reason: None,
        call_id: Some("c1".into()),
    });
    events.push(Event::CallReconciled {
        call_id: "c1".into(),
        happened: false,
        output: Value::Null,
        by: "ops".into(),
        note: None,
    });
    assert_eq!(
        fold(events).next_action(0),
        Action::Dispatch { call: call("c1") }
    );
    // An idempotent call is never in doubt (it is run again), and a call with an outcome is not.
    let refused = RunState::from_events(&log(vec![
        started(5),
        requested(1),
        replied(1, None, &["c1"]),
        intent("c1", true, 1),
        Event::ToolInDoubt {
            call_id: "c1".into(),
            reason: "x".into(),
            duration_us: 1,
        },
    ]))
    .unwrap_err();
    assert!(refused.problem.contains("idempotent"), "{refused}");
    let refused = RunState::from_events(&log(vec![
        started(5),
        requested(1),
        replied(1, None, &["c1"]),
        intent("c1", false, 1),
        outcome("c1"),
        Event::ToolInDoubt {
            call_id: "c1".into(),
            reason: "x".into(),
            duration_us: 1,
        },
    ]))
    .unwrap_err();
    assert!(
        refused.problem.contains("no intent without an outcome"),
        "{refused}"
    );
}

/// An outcome or a hand-off settles a call with an intent and no outcome, once: a second
/// outcome, a hand-off after an outcome, one before the intent, and either of a call the step
/// does not have are refused, so a log cannot settle a call twice or one never started.
#[test]
fn an_outcome_or_a_hand_off_settles_only_a_call_in_flight_once() {
    let handed = |id: &str| Event::ToolHandedOff { call_id: id.into() };
    let base = || vec![started(5), requested(1), replied(1, None, &["c1"])];
    let refused = |tail: Vec<Event>| {
        let mut events = base();
        events.extend(tail);
        RunState::from_events(&log(events)).unwrap_err().problem
    };
    let twice = refused(vec![intent("c1", false, 1), outcome("c1"), outcome("c1")]);
    assert!(twice.contains("no intent without an outcome"), "{twice}");
    let after = refused(vec![intent("c1", false, 1), outcome("c1"), handed("c1")]);
    assert!(after.contains("no intent without an outcome"), "{after}");
    let early = refused(vec![handed("c1")]);
    assert!(early.contains("no intent without an outcome"), "{early}");
    let unknown = refused(vec![intent("c1", false, 1), handed("c2")]);
    assert!(unknown.contains("no call c2 in this step"), "{unknown}");
    let unknown = refused(vec![intent("c1", false, 1), outcome("c2")]);
    assert!(unknown.contains("no call c2 in this step"), "{unknown}");
    // Once each, both settle it.
    let mut events = base();
    events.extend([intent("c1", false, 1), handed("c1")]);
    let state = RunState::from_events(&log(events)).unwrap();
    assert!(state.calls()[0].handed_off);
}

/// A hand-off records the turn that made it: what tells the calls a resume handed over from
/// those handed before the run was held (the gateway answers a request sent again with the
/// former only). A process that picks up a run a crash interrupted starts a new attempt, not a
/// new turn, so what the interrupted resume handed still counts as this turn's.
#[test]
fn a_hand_off_records_the_turn_that_made_it() {
    let handed = |id: &str| Event::ToolHandedOff { call_id: id.into() };
    let resumed = |attempt| Event::RunResumed {
        attempt,
        agent_changed: false,
    };
    let this_turn = |state: &RunState| -> Vec<String> {
        state
            .handed_this_turn()
            .map(|c| c.call.id.clone())
            .collect()
    };
    let mut events = vec![
        started(5),
        requested(1),
        replied(1, None, &["c1", "c2", "c3"]),
        judged("c1", Verdict::Allow),
        intent("c1", false, 1),
        handed("c1"),
        judged("c2", Verdict::Ask),
        asked("a2", "c2", None),
        judged("c3", Verdict::Ask),
        asked("a3", "c3", None),
    ];
    assert_eq!(this_turn(&fold(events.clone())), ["c1"]);
    // A crash before the run was held: the pick-up is the same turn.
    events.push(resumed(2));
    let state = fold(events.clone());
    assert_eq!((state.attempt(), state.turn()), (2, 1));
    assert_eq!(this_turn(&state), ["c1"]);
    events.extend([
        Event::RunSuspended {
            approvals: vec!["a2".into(), "a3".into()],
        },
        decided("a2", true),
        decided("a3", false),
        resumed(3),
    ]);
    let state = fold(events.clone());
    assert_eq!((state.attempt(), state.turn()), (3, 2));
    assert!(this_turn(&state).is_empty(), "c1 was handed a turn before");
    events.extend([intent("c2", false, 1), handed("c2")]);
    let state = fold(events.clone());
    let handed_in: Vec<_> = state.calls().iter().map(|c| c.handed_in).collect();
    assert_eq!(handed_in, [Some(1), Some(2), None]);
    assert_eq!(this_turn(&state), ["c2"]);
    // The resume was interrupted by a crash after it handed c2; whatever picks the run up
    // carries on the same turn, so c2 is still what this turn handed.
    events.push(resumed(4));
    let state = fold(events);
    assert_eq!((state.attempt(), state.turn()), (4, 2));
    assert_eq!(this_turn(&state), ["c2"]);
}

#[test]
fn an_answer_is_judged_and_returned_withheld_or_held_for_a_person() {
    let base = || vec![started(5), requested(1), replied(1, Some("done"), &[])];
    // Withheld: the run ends denied and returns nothing.
    let mut denied = base();
    denied.push(answered(1, Verdict::Deny, None));
    match fold(denied).next_action(0) {
        Action::End(e) => {
            assert_eq!((e.status, e.output), (EndState::Denied, None));
            assert!(e.reason.unwrap().contains("withheld the answer: because"));
        }
        other => panic!("{other:?}"),
    }
    // Held: an approval is requested for it, the run suspends, a person releases it.
    let mut held = base();
    held.push(answered(1, Verdict::Ask, None));
    assert!(matches!(
        fold(held.clone()).next_action(0),
        Action::HoldAnswer { step: 1, .. }
    ));
    held.push(Event::ApprovalRequested {
        approval_id: "ap".into(),
        call_id: "answer_1".into(),
        tool: "respond".into(),
        args: json!({"text": "done"}),
        policies: vec![],
        reasons: vec![],
        labels: vec![],
        expires_at_ms: Some(1_000),
        provenance: Default::default(),
    });
    let state = fold(held.clone());
    assert_eq!(state.pending_approvals(), vec!["ap"]);
    assert_eq!(
        state.next_action(0),
        Action::Suspend {
            approvals: vec!["ap".into()]
        }
    );
    assert_eq!(
        state.next_action(1_000),
        Action::Expire {
            approval_id: "ap".into()
        }
    );
    let mut approved = held.clone();
    approved.push(Event::RunSuspended {
        approvals: vec!["ap".into()],
    });
    approved.push(decided("ap", true));
    approved.push(Event::RunResumed {
        attempt: 2,
        agent_changed: false,
    });
    assert!(matches!(
        fold(approved.clone()).next_action(0),
        Action::ReleaseAnswer { step: 1, ref approved_by, .. } if approved_by == "alice"
    ));
    approved.push(answered(1, Verdict::Ask, Some("alice")));
    assert!(matches!(
        fold(approved).next_action(0),
        Action::End(Ended {
            status: EndState::Completed,
            ..
        })
    ));
    let mut refused = held;
    refused.push(decided("ap", false));
    assert!(matches!(
        fold(refused).next_action(0),
        Action::End(Ended {
            status: EndState::Denied,
            ..
        })
    ));
}

#[test]
fn provenance_counters_grants_and_data_are_folded_from_the_log() {
    let mut labelled = intent("c1", true, 1);
    if let Event::ToolIntent {
        field_labels,
        data,
        args,
        ..
    } = &mut labelled
    {
        field_labels.insert("/memo".into(), vec!["untrusted".into()]);
        *data = Some("payees".into());
        *args = json!({"amount": 40});
    }
    let events = vec![
        started(5),
        Event::GrantsFixed {
            grants: vec![crate::grants::Grant {
                tool: "t".into(),
                args: Default::default(),
                max_calls: Some(2),
            }],
            by: "caller".into(),
            model: None,
            usage: Usage::default(),
            cost_micros: 0,
        },
        requested(1),
        replied(1, None, &["c1", "c2"]),
        labelled,
        Event::ToolOutcome {
            call_id: "c1".into(),
            ok: true,
            output: json!({"memo": "pay GB33BUKB20201555555555", "payee": "DE44500105175407324931"}),
            duration_us: 1,
            labels: Default::default(),
        },
    ];
    let state = fold(events);
    let s = state.sources();
    assert!(
        s.origins(&json!("GB33BUKB20201555555555"))
            .contains("untrusted")
    );
    assert!(
        !s.origins(&json!("DE44500105175407324931"))
            .contains("untrusted")
    );
    assert!(s.origins(&json!("do it")).contains("task"));
    assert!(state.labels().contains("untrusted"));
    assert!(state.data()["payees"].contains("DE44500105175407324931"));
    assert_eq!(state.grants().unwrap().len(), 1);
    let counter = state.counter("t", "c2");
    assert_eq!((counter.calls, counter.sums["amount"]), (1, 40.0));
    assert_eq!(state.calls_started(), 1);
}

/// A reply the provider stopped at its cap (`length` from Chat Completions, `max_tokens` from
/// the Messages API) marks the run's last reply as cut; the next reply that was not, unmarks it.
/// The stop text a reply stopped at is the last reply's, and no later one's.
#[test]
fn a_reply_stopped_at_its_cap_is_known_as_cut_until_the_next() {
    let with_stop = |step: u32, why: &str| match replied(step, Some("partial"), &["c1"]) {
        Event::ModelReplied {
            step,
            text,
            tool_calls,
            usage,
            latency_us,
            model,
            cost_micros,
            ..
        } => Event::ModelReplied {
            step,
            text,
            tool_calls,
            usage,
            latency_us,
            stop_reason: Some(why.into()),
            stop_sequence: (why == "stop_sequence").then(|| "###".into()),
            model,
            cost_micros,
        },
        other => other,
    };
    for why in ["length", "max_tokens"] {
        let state = fold(vec![started(5), requested(1), with_stop(1, why)]);
        assert!(state.last_reply_cut(), "{why}");
    }
    let state = fold(vec![
        started(5),
        requested(1),
        with_stop(1, "length"),
        intent("c1", true, 1),
        outcome("c1"),
        requested(2),
        with_stop(2, "stop"),
    ]);
    assert!(!state.last_reply_cut());
    assert_eq!(state.last_stop_sequence(), None);
    let stopped = vec![started(5), requested(1), with_stop(1, "stop_sequence")];
    let state = fold(stopped.clone());
    assert_eq!(state.last_stop_sequence(), Some("###"));
    assert!(!state.last_reply_cut());
    let mut later = stopped;
    later.extend([
        intent("c1", true, 1),
        outcome("c1"),
        requested(2),
        with_stop(2, "end_turn"),
    ]);
    assert_eq!(fold(later).last_stop_sequence(), None);
}
