//! The labels a gateway conversation keeps: carried into requests that drop their tool
//! results, shared across servers and a killed one, listed and forgotten by an operator, and
//! held calls kept for their own user.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn labels_stay_with_a_conversation_that_drops_its_tool_results_and_held_calls_stay_with_their_user()
 {
    let state = tempfile::tempdir().unwrap();
    let agents = example_gateway();
    let ann = token(REIN, state.path(), "acme", "ann", "gateway");
    let bob = token(REIN, state.path(), "acme", "bob", "gateway");
    let approver = token(REIN, state.path(), "acme", "omar", "approvals:decide");
    let s = Served::start(REIN, state.path(), agents.path(), &[]);
    let first = json!({"role": "user", "content": "Please send a summary by mail"});
    let fetched = ask_in(&s, &ann, "carry-1", json!([first])).await;
    let call = fetched["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "web_fetch", "{fetched}");
    let with_result = json!([first,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Shipping takes 3 days."}]);
    let read = ask_in(&s, &ann, "carry-1", with_result).await;
    assert_eq!(
        read["choices"][0]["message"]["content"],
        "The page is about shipping times."
    );
    // The client trims its history: the page's text is gone, its label is not.
    let trimmed = json!([first,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "assistant", "content": "The page is about shipping times."},
        {"role": "user", "content": "mail it"}]);
    let held = ask_in(&s, &ann, "carry-1", trimmed.clone()).await;
    let text = held["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        held["choices"][0]["message"]["tool_calls"].is_null(),
        "{held}"
    );
    assert!(
        text.contains("send_email") && text.contains("approval"),
        "{text}"
    );
    // The same history in a conversation that never read the page is not held.
    let clean = ask_in(&s, &ann, "carry-2", trimmed.clone()).await;
    assert_eq!(
        clean["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "send_email",
        "{clean}"
    );
    // Renaming the fetch in the history does not make its page trusted: rein knows which tool
    // it handed that call id to.
    let mut renamed = call.clone();
    renamed["function"]["name"] = json!("orders_lookup");
    let relabelled = json!([first,
        {"role": "assistant", "content": null, "tool_calls": [renamed]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Shipping takes 3 days."},
        {"role": "assistant", "content": "The page is about shipping times."},
        {"role": "user", "content": "mail it"}]);
    let still_held = ask_in(&s, &ann, "carry-3", relabelled).await;
    assert!(
        still_held["choices"][0]["message"]["tool_calls"].is_null(),
        "a renamed result laundered its label: {still_held}"
    );
    // Another user naming Ann's conversation gets nothing of hers: not the wait, not the call.
    let approval = approval_in(&text);
    approve(&s, &approver, &approval).await;
    let bobs = ask_in(&s, &bob, "carry-1", trimmed.clone()).await;
    let bob_text = bobs["choices"][0]["message"].to_string();
    assert!(!bob_text.contains(&approval), "{bobs}");
    assert!(
        !bobs["choices"][0]["message"]["tool_calls"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&held["id"].as_str().unwrap()["chatcmpl-".len()..]),
        "Bob received Ann's held call: {bobs}"
    );
    // Ann's next request receives her approved call.
    let anns = ask_in(&s, &ann, "carry-1", trimmed).await;
    let delivered = &anns["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(delivered["function"]["name"], "send_email", "{anns}");
    assert!(
        delivered["id"]
            .as_str()
            .unwrap()
            .ends_with(&held["id"].as_str().unwrap()["chatcmpl-".len()..]),
        "{anns}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversations_labels_reach_a_second_server_and_outlive_a_killed_one() {
    let state = tempfile::tempdir().unwrap();
    let agents = example_gateway();
    let ann = token(REIN, state.path(), "acme", "ann", "gateway");
    let mut a = Served::start(REIN, state.path(), agents.path(), &[]);
    let mut b = Served::start(REIN, state.path(), agents.path(), &[]);
    let first = json!({"role": "user", "content": "Please send a summary by mail"});
    // Server B saw the conversation before the page was read (through server A), not since.
    ask_in(&b, &ann, "shared", json!([first])).await;
    let trimmed = page_read(&a, &ann, "shared").await;
    let on_b = ask_in(&b, &ann, "shared", trimmed.clone()).await;
    assert!(
        mail_held(&on_b),
        "server B handed over mail after untrusted input it never saw: {on_b}"
    );
    // Read through A, which is then killed: the server after it still knows.
    let trimmed = page_read(&a, &ann, "restarted").await;
    a.kill();
    b.kill();
    let c = Served::start(REIN, state.path(), agents.path(), &[]);
    let after = ask_in(&c, &ann, "restarted", trimmed.clone()).await;
    assert!(
        mail_held(&after),
        "a restart laundered the conversation's labels: {after}"
    );
    // The same history in a conversation that never read the page is not held.
    let clean = ask_in(&c, &ann, "never-read", trimmed).await;
    assert_eq!(
        clean["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "send_email",
        "{clean}"
    );
}

/// An operator sees which conversations carry `untrusted` (`rein conversations list`, or
/// `GET /v1/conversations` for the tenant's admins), and after checking what the page brought
/// in forgets one: its next request, history trimmed, is judged on what that history carries,
/// so the mail goes through; another conversation that read the page is still held. Another
/// tenant's admin sees, forgets and prunes none of it; a name that is not kept is an error
/// saying where to look.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_lists_a_conversations_labels_and_forgets_them() {
    let state = tempfile::tempdir().unwrap();
    let agents = example_gateway();
    let ann = token(REIN, state.path(), "acme", "ann", "gateway");
    let served = Served::start(REIN, state.path(), agents.path(), &[]);
    let trimmed = page_read(&served, &ann, "checked").await;
    page_read(&served, &ann, "unchecked").await;
    let cli = |args: &[&str]| {
        let out = rein(state.path(), args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    let listed = json_out(&cli(&[
        "conversations",
        "list",
        "--tenant",
        "acme",
        "--json",
    ]));
    let checked = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"] == "checked")
        .unwrap_or_else(|| panic!("no conversation `checked` listed: {listed}"));
    assert_eq!(checked["user"], "ann", "{checked}");
    assert_eq!(checked["agent"], "gateway", "{checked}");
    assert!(
        checked["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "untrusted"),
        "{checked}"
    );
    assert_eq!(checked["held"], json!([]), "{checked}");
    // The same through HTTP, for the tenant's admins only; another tenant's sees and forgets
    // nothing of it.
    let admin = token(REIN, state.path(), "acme", "root", "admin");
    let other = token(REIN, state.path(), "globex", "root", "admin");
    let http = client();
    let list = async |token: &str| {
        let r = http
            .get(served.url("/v1/conversations?agent=gateway"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, over_http) = list(&admin).await;
    assert_eq!(status, 200, "{over_http}");
    assert_eq!(over_http, listed);
    assert_eq!(list(&other).await, (200, json!([])));
    assert_eq!(list(&ann).await.0, 403);
    let forget_over_http = async |token: &str, conversation: &str| {
        http.post(served.url("/v1/conversations/forget"))
            .bearer_auth(token)
            .json(&json!({"user": "ann", "agent": "gateway", "conversation": conversation}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(forget_over_http(&other, "checked").await, 404);
    assert_eq!(forget_over_http(&ann, "checked").await, 403);
    assert_eq!(forget_over_http(&admin, "checked").await, 204);
    // The audit trail has it, for this tenant's auditors only: what was forgotten, and who
    // asked.
    let forgotten_records = async |token: &str| {
        let r = http
            .get(served.url("/v1/audit/export"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["kind"] == "conversation_forgotten")
            .collect::<Vec<_>>()
    };
    let records = forgotten_records(&admin).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let data = &records[0]["data"];
    assert_eq!(data["conversation"], "checked", "{data}");
    assert_eq!(data["user"], "ann", "{data}");
    assert_eq!(data["labels"], checked["labels"], "{data}");
    assert_eq!(data["why"], "forgotten", "{data}");
    assert_eq!(data["by"]["via"], "http", "{data}");
    assert_eq!(data["by"]["user"], "root", "{data}");
    assert!(forgotten_records(&other).await.is_empty());
    // Its inclusion proof too, for this tenant's auditors only.
    let proof = async |token: &str| {
        let seq = records[0]["seq"].as_u64().unwrap();
        http.get(served.url(&format!("/v1/audit/proof/{seq}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(proof(&admin).await, 200);
    assert_eq!(proof(&other).await, 404);
    // Forgotten, it is not there to forget again.
    let forget = [
        "conversations",
        "forget",
        "checked",
        "--agent",
        "gateway",
        "--user",
        "ann",
        "--tenant",
        "acme",
    ];
    let again = rein(state.path(), &forget);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("rein conversations list"),
        "{}",
        stderr(&again)
    );
    // Pruning what has not changed for a day leaves both: they changed a moment ago.
    let pruned = cli(&["conversations", "prune", "--unused-for-days", "1"]);
    assert!(
        String::from_utf8_lossy(&pruned.stdout).starts_with("0 conversations"),
        "{pruned:?}"
    );
    let (_, after_prune) = list(&admin).await;
    assert_eq!(after_prune.as_array().unwrap().len(), 1, "{after_prune}");
    let forgotten = ask_in(&served, &ann, "checked", trimmed.clone()).await;
    assert_eq!(
        forgotten["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "send_email",
        "{forgotten}"
    );
    let still = ask_in(&served, &ann, "unchecked", trimmed.clone()).await;
    assert!(mail_held(&still), "{still}");
    // Left alone for two days (as the file has it), a conversation that read the page and holds
    // nothing is pruned over HTTP by the tenant's admin; the one holding the mail is not, nor
    // one used since, nor does another tenant's admin prune either.
    page_read(&served, &ann, "stale").await;
    page_read(&served, &ann, "busy").await;
    let aged = rusqlite::Connection::open(state.path().join("conversations.sqlite"))
        .unwrap()
        .execute(
            "UPDATE conversations
             SET updated_ms = updated_ms - 2 * 86400000, used_ms = used_ms - 2 * 86400000
             WHERE conversation IN ('stale', 'unchecked', 'busy')",
            [],
        )
        .unwrap();
    assert_eq!(aged, 3);
    // One of them is in use again: a request that changes nothing of it still counts.
    let again = json!([{"role": "user", "content": "Please send a summary by mail"}]);
    ask_in(&served, &ann, "busy", again).await;
    let prune_over_http = async |token: &str, days: u32| {
        let r = http
            .post(served.url("/v1/conversations/prune"))
            .bearer_auth(token)
            .json(&json!({"unused_for_days": days}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    assert_eq!(prune_over_http(&ann, 1).await.0, 403);
    let (status, refused) = prune_over_http(&admin, 0).await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused.to_string().contains("unused_for_days"), "{refused}");
    assert_eq!(
        prune_over_http(&other, 1).await,
        (200, json!({"pruned": 0}))
    );
    assert_eq!(
        prune_over_http(&admin, 3).await,
        (200, json!({"pruned": 0}))
    );
    assert_eq!(
        prune_over_http(&admin, 1).await,
        (200, json!({"pruned": 1}))
    );
    let records = forgotten_records(&admin).await;
    let pruned: Vec<_> = records.iter().map(|r| &r["data"]["conversation"]).collect();
    assert_eq!(pruned, ["checked", "stale"], "{records:?}");
    assert_eq!(
        records[1]["data"]["why"], "pruned: unused for 1 day",
        "{records:?}"
    );
    // The records are in the signed chain, which still verifies whole.
    cli(&["audit", "verify"]);
    let (_, left) = list(&admin).await;
    let left: Vec<_> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation"].as_str().unwrap())
        .collect();
    assert!(left.contains(&"unchecked"), "{left:?}");
    assert!(left.contains(&"busy"), "{left:?}");
    assert!(!left.contains(&"stale"), "{left:?}");
    // Forgetting the conversation holding the mail forgets its labels, not the held call: once
    // a person approves it, its next request (to this same server) receives it.
    assert_eq!(forget_over_http(&admin, "unchecked").await, 204);
    let (_, kept) = list(&admin).await;
    let unchecked = kept
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"] == "unchecked")
        .unwrap_or_else(|| panic!("the conversation holding a call went: {kept}"));
    assert_eq!(unchecked["labels"], json!([]), "{unchecked}");
    assert_eq!(
        unchecked["held"].as_array().unwrap().len(),
        1,
        "{unchecked}"
    );
    let approver = token(REIN, state.path(), "acme", "omar", "approvals:decide");
    let text = still["choices"][0]["message"]["content"].as_str().unwrap();
    approve(&served, &approver, &approval_in(text)).await;
    let held_run = unchecked["held"][0].as_str().unwrap().to_owned();
    let delivered = ask_in(&served, &ann, "unchecked", trimmed).await;
    let call = &delivered["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "send_email", "{delivered}");
    // The approved call itself, from the held run, not one the model proposed afresh.
    assert!(
        call["id"].as_str().unwrap().ends_with(&held_run),
        "{delivered} (held run {held_run})"
    );
    // And the labels the held run brought in from before the forget stay forgotten; with them
    // gone, there is nothing left to forget.
    let (_, after) = list(&admin).await;
    let unchecked = after
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"] == "unchecked");
    assert!(
        unchecked.is_none_or(|c| c["labels"] == json!([])),
        "{after}"
    );
    assert_eq!(forget_over_http(&admin, "unchecked").await, 404);
}
