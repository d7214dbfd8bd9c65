//! Fake model servers on loopback: OpenAI- and Anthropic-shaped answers played in order, built
//! from tool calls (duplicate ids, ids with path characters, arguments that are not JSON, usage
//! above what was reserved), and a server that accepts connections and never answers.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::Mutex;

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Plays answers in order; after the last, repeats it.
struct Sequence(Mutex<VecDeque<Value>>);

impl Respond for Sequence {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let mut answers = self.0.lock().unwrap();
        let answer = if answers.len() > 1 {
            answers.pop_front()
        } else {
            answers.front().cloned()
        };
        ResponseTemplate::new(200).set_body_json(answer.unwrap_or(Value::Null))
    }
}

/// A model server answering every POST with `answers`, in order.
pub async fn server(answers: Vec<Value>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Sequence(Mutex::new(answers.into())))
        .mount(&server)
        .await;
    server
}

/// Plays answers in order; every request after them says so on a channel, then hangs.
struct ThenHang {
    answers: Mutex<VecDeque<Value>>,
    arrived: Mutex<std::sync::mpsc::Sender<()>>,
}

impl Respond for ThenHang {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        if let Some(answer) = self.answers.lock().unwrap().pop_front() {
            return ResponseTemplate::new(200).set_body_json(answer);
        }
        let _ = self.arrived.lock().unwrap().send(());
        ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(3600))
    }
}

/// A model server answering with `answers`, in order, then hanging on every later request;
/// the receiver hears of each request that hangs as it arrives.
pub async fn server_then_hang(answers: Vec<Value>) -> (MockServer, std::sync::mpsc::Receiver<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ThenHang {
            answers: Mutex::new(answers.into()),
            arrived: Mutex::new(tx),
        })
        .mount(&server)
        .await;
    (server, rx)
}

/// A Chat Completions answer with these tool calls `(id, name on the wire, raw arguments)`.
pub fn openai_calls(calls: &[(&str, &str, &str)]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
        })
        .collect();
    json!({
        "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": calls}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10}
    })
}

/// A Chat Completions answer with text only, reporting this usage.
pub fn openai_text(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    })
}

/// A Messages answer with these tool calls `(id, name on the wire, input)`.
pub fn anthropic_calls(calls: &[(&str, &str, Value)]) -> Value {
    let content: Vec<Value> = calls
        .iter()
        .map(
            |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input}),
        )
        .collect();
    json!({
        "content": content, "stop_reason": "tool_use",
        "usage": {"input_tokens": 50, "output_tokens": 10}
    })
}

/// A Messages answer with text only.
pub fn anthropic_text(text: &str) -> Value {
    json!({
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 60, "output_tokens": 5}
    })
}

/// A server that accepts connections and never answers: a model call to it hangs until its
/// timeout. Its address is `http://127.0.0.1:<port>`; it lives as long as the process.
pub fn hanging_server() -> String {
    hanging_server_told().0
}

/// The same, telling the receiver of each connection it accepts (a model call in flight).
pub fn hanging_server_told() -> (String, std::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            let _ = tx.send(());
        }
    });
    (format!("http://127.0.0.1:{port}"), rx)
}

/// A server that answers each request with `answer` (JSON) only when told to: the receiver hears
/// of each request as it arrives; each send on the sender lets one answer go. For a model call
/// still in flight when something else happens (its client going away).
pub fn held_server(
    answer: Value,
) -> (
    String,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived, heard) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let body = answer.to_string();
        for stream in listener.incoming().flatten() {
            // The whole request is read (its headers, then as many bytes as it says it has).
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut request = vec![0; length];
            let _ = reader.read_exact(&mut request);
            let _ = arrived.send(());
            if released.recv().is_err() {
                return;
            }
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://127.0.0.1:{port}"), heard, release)
}
