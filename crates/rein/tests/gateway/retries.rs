//! What a refusal tells a client about sending the request again, as the official SDKs read it
//! (`x-should-retry`, `Retry-After`): a spent budget or a run a person cancelled is not worth a
//! retry, a token's request rate is in the seconds it names. The SDKs' part is
//! `tests/sdk/retry_client.py`.

use rein_testkit::serve::{Served, client, token};
use serde_json::{Value, json};

use super::{budget_gateway, python_client, upstream_gateway};
use crate::common::REIN;

/// The error body of a refusal with `status` that tells its client not to send it again: no
/// `Retry-After`, `x-should-retry: false`.
pub(super) async fn refused_for_good(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert!(
        r.headers().get("retry-after").is_none(),
        "{:?}",
        r.headers()
    );
    r.json().await.unwrap()
}

/// The runs the gateway recorded, one for each request it took.
fn runs_in(state: &std::path::Path) -> usize {
    let rein = rein_api::Rein::new(rein_api::Options::new(state)).unwrap();
    rein.list_runs(&rein_api::RunQuery {
        limit: 10_000,
        ..Default::default()
    })
    .unwrap()
    .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_send_a_request_refused_on_a_spent_budget_once() {
    // A budget of one token a day: every request is refused before its model call.
    let agents = budget_gateway(Some(1));
    let state = tempfile::tempdir().unwrap();
    let agent = token(REIN, state.path(), "acme", "ann", "gateway");
    let s = Served::start(REIN, state.path(), agents.path(), &[]);
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&agent)
        .json(&json!({"model": "gw", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    let e = refused_for_good(r, 429).await;
    assert_eq!(e["error"]["code"], "insufficient_quota", "{e}");
    assert_eq!(runs_in(state.path()), 1);

    // Each SDK, retrying twice by default, sends its request once.
    python_client("retry_client.py", &[&s.base, &agent]);
    assert_eq!(
        runs_in(state.path()),
        3,
        "each SDK's request was taken once, not retried"
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_over_its_request_rate_is_told_when_to_come_back_in_each_apis_shape() {
    // One request at once, then one every twenty seconds.
    let agents = budget_gateway(None);
    let state = tempfile::tempdir().unwrap();
    let agent = token(REIN, state.path(), "acme", "ann", "gateway");
    let s = Served::start(
        REIN,
        state.path(),
        agents.path(),
        &["--rate", "0.05", "--burst", "1"],
    );
    let body = json!({"model": "gw", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hello"}]});
    let send = |path: &'static str| {
        client()
            .post(s.url(path))
            .bearer_auth(&agent)
            .json(&body)
            .send()
    };
    assert_eq!(send("/v1/chat/completions").await.unwrap().status(), 200);
    for (path, kind) in [
        ("/v1/chat/completions", "/error/code"),
        ("/v1/messages", "/error/type"),
    ] {
        let r = send(path).await.unwrap();
        assert_eq!(r.status().as_u16(), 429, "{path}");
        assert_eq!(r.headers()["x-should-retry"], "true", "{path}");
        // The bucket refills one request in twenty seconds, less the moments since the first.
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((15..=20).contains(&wait), "{path}: Retry-After {wait}");
        let e: Value = r.json().await.unwrap();
        let expected = if path == "/v1/messages" {
            "rate_limit_error"
        } else {
            "rate_limit_exceeded"
        };
        assert_eq!(e.pointer(kind), Some(&json!(expected)), "{path}: {e}");
    }
    assert_eq!(runs_in(state.path()), 1, "a refused request starts no run");
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_run_a_person_cancels_is_not_for_its_client_to_send_again() {
    let (upstream, called, release) =
        rein_testkit::fake::held_server(rein_testkit::fake::openai_text("too late", 5, 2));
    let (s, agent, dirs) = upstream_gateway(&upstream, "max_attempts = 1\n");
    let url = s.url("/v1/chat/completions");
    let pending = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(&agent)
            .json(&json!({"model": "gw", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    });
    // The model call is in flight: an operator cancels the run, then the model answers.
    tokio::task::spawn_blocking(move || called.recv().unwrap())
        .await
        .unwrap();
    let rein = rein_api::Rein::new(rein_api::Options::new(dirs.1.path())).unwrap();
    let run = rein
        .list_runs(&rein_api::RunQuery::default())
        .unwrap()
        .remove(0)
        .id;
    rein.cancel_run(&run, "ops").await.unwrap();
    release.send(()).unwrap();
    let r = pending.await.unwrap();
    let e = refused_for_good(r, 409).await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains(&run),
        "{e}"
    );
    drop(s);
}
