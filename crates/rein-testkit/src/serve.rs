//! Driving `rein serve` as a service's clients would: the server started as a process on a free
//! loopback port, tokens made with `rein tokens create`, requests over real HTTP, and a run's
//! Server-Sent Events read as they come.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use serde_json::Value;

/// A `rein serve` process.
#[derive(Debug)]
pub struct Served {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its state directory.
    pub state: PathBuf,
    /// Told when a server started with a fault reaches it.
    fault: Option<mpsc::Receiver<()>>,
}

/// What `rein` prints once it stops at a fault injection point (and waits to be killed).
const AT_FAULT: &str = "fault injection point reached";

impl Served {
    /// Starts `bin serve` on a free port for the agents in `agents`, with more flags.
    pub fn start(bin: &str, state: &Path, agents: &Path, extra: &[&str]) -> Served {
        Served::spawn(bin, state, agents, extra, None)
    }

    /// Starts `bin serve` as [`Served::start`] does (a build with the `faults` feature), to
    /// stop once an event numbered `seq` of a run it drives is durable: it then waits, mid-way,
    /// to be killed, as a crash at that point would leave things. [`Served::at_fault`] waits
    /// for that.
    pub fn start_stopping_after_event(bin: &str, state: &Path, agents: &Path, seq: u64) -> Served {
        Served::spawn(bin, state, agents, &[], Some(seq))
    }

    fn spawn(
        bin: &str,
        state: &Path,
        agents: &Path,
        extra: &[&str],
        after_event: Option<u64>,
    ) -> Served {
        let mut command = Command::new(bin);
        command
            .arg("--state-dir")
            .arg(state)
            .args(["serve", "--listen", "127.0.0.1:0", "--agents"])
            .arg(agents)
            .args(extra)
            .env_remove("REIN_FAULT_AFTER_EVENT")
            .env_remove("REIN_FAULT_AFTER_EFFECT")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(seq) = after_event {
            command
                .env("REIN_FAULT_AFTER_EVENT", seq.to_string())
                .stderr(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} serve: {e}"));
        // What it prints goes on to the test's output, read as it comes (a full pipe would
        // stop the server), and the fault's line is told apart.
        let fault = child.stderr.take().map(|stderr| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    if line.contains(AT_FAULT) {
                        let _ = tx.send(());
                    }
                }
            });
            rx
        });
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("rein serve: listening on ")
            .unwrap_or_else(|| panic!("rein serve did not start: {line:?}"))
            .to_owned();
        Served {
            child: Some(child),
            base,
            state: state.to_owned(),
            fault,
        }
    }

    /// Waits until a server started with a fault stops at it; panics if it exits first.
    pub fn at_fault(&self) {
        let fault = self
            .fault
            .as_ref()
            .expect("a server started with Served::start_stopping_after_event");
        // Bounded, so a server that never reaches its fault (it answered instead, or was built
        // without fault injection) fails the test rather than hanging it.
        match fault.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the server did not reach its fault in two minutes")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the server exited before it reached its fault")
            }
        }
    }

    /// A URL on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }
}

impl Served {
    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A token made with `bin tokens create`.
pub fn token(bin: &str, state: &Path, tenant: &str, user: &str, scopes: &str) -> String {
    let out = Command::new(bin)
        .arg("--state-dir")
        .arg(state)
        .args([
            "tokens", "create", "--tenant", tenant, "--user", user, "--scope", scopes,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An HTTP client.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

/// A run's event stream, read event by event.
#[derive(Debug)]
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

/// One event of the stream: its id (the event's sequence number), type and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The sequence number.
    pub id: u64,
    /// The event's type.
    pub kind: String,
    /// Its EventRecord.
    pub data: Value,
}

impl Events {
    /// Opens the stream of `run` as `token`, after `last_event_id` when given.
    pub async fn open(base: &str, token: &str, run: &str, last_event_id: Option<u64>) -> Events {
        let mut request = client()
            .get(format!("{base}/v1/runs/{run}/events"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "opening the event stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    id: 0,
                    kind: String::new(),
                    data: Value::Null,
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().parse().unwrap();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data = serde_json::from_str(v.trim()).unwrap();
                    }
                }
                if event.id > 0 {
                    return Some(event);
                }
                continue;
            }
            match self.response.chunk().await.unwrap() {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// Events until one of `kind` (included).
    pub async fn until(&mut self, kind: &str) -> Vec<Event> {
        let mut got = Vec::new();
        while let Some(e) = self.next().await {
            let done = e.kind == kind;
            got.push(e);
            if done {
                return got;
            }
        }
        panic!("the stream ended before a {kind} event: {got:?}");
    }
}
