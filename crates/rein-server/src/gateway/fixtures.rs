//! Answers of every shape the faces put in their APIs' words, and the ways a face may say each
//! (the note in the text, or apart with a text or without): the faces' tests' shared fixtures.

use rein_api::gateway::{GatewayAnswer, ToolCall};
use rein_api::v1;
use serde_json::{Value, json};

use super::Said;

fn answer(
    text: Option<&str>,
    calls: Vec<ToolCall>,
    cut: bool,
    stop: Option<&str>,
) -> GatewayAnswer {
    GatewayAnswer {
        run_id: "r1".into(),
        conversation: "c1".into(),
        status: v1::EndState::Completed,
        text: text.map(str::to_owned),
        calls,
        withheld: Vec::new(),
        results: Vec::new(),
        usage: v1::Usage {
            input_tokens: 60,
            output_tokens: 20,
        },
        cost_usd: 0.0,
        reason: None,
        malformed: false,
        out_of_credit: false,
        cut,
        stop_sequence: stop.map(str::to_owned),
    }
}

fn call(id: &str, arguments: Value) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: "orders_lookup".into(),
        arguments,
        invalid_arguments: None,
    }
}

/// With calls (one whose arguments are not JSON), cut at the cap, stopped at a stop text,
/// and without text.
pub(crate) fn answers() -> Vec<GatewayAnswer> {
    vec![
        answer(
            Some("Let me look."),
            vec![
                call("call_1", json!({"order_id": "A-1"})),
                call("call_2", json!("not json")),
            ],
            false,
            None,
        ),
        answer(Some("cut sh"), Vec::new(), true, None),
        answer(Some("a, b"), Vec::new(), false, Some("###")),
        answer(None, Vec::new(), false, None),
    ]
}

/// The ways a face may say `answer`.
pub(crate) fn ways_to_say(answer: &GatewayAnswer) -> [Said; 3] {
    [
        Said::of(answer, false),
        Said {
            text: Some("{}".into()),
            refusal: Some("withheld".into()),
        },
        Said {
            text: None,
            refusal: Some("all of it withheld".into()),
        },
    ]
}
