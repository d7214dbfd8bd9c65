//! What the server holds: the engine API, the agents it serves (loaded once, loaded again when
//! their configuration changes), the live event hub, the metrics, the request limits, and the
//! runs it drives in the background.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rein_api::{LoadedAgent, Rein};
use tokio::sync::Mutex as AsyncMutex;

use crate::auth::RateLimiter;
use crate::events::Hub;
use crate::metrics::Metrics;

/// Limits on requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// The largest request body of the gateway's endpoints, whose clients send whole
    /// conversations.
    pub max_gateway_body_bytes: usize,
    /// The longest a request may take, streams aside (408 beyond).
    pub request_timeout: Duration,
    /// Requests a second per token (429 beyond), and how many at once.
    pub rate_per_second: f64,
    /// The burst.
    pub rate_burst: f64,
    /// Event streams one token may hold open at once (429 beyond).
    pub max_streams_per_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_gateway_body_bytes: 32 << 20,
            request_timeout: Duration::from_secs(30),
            rate_per_second: 50.0,
            rate_burst: 100.0,
            max_streams_per_token: 16,
        }
    }
}

/// The agents served: every agent folder found in the folders given (a folder that is itself an
/// agent folder, or holds agent folders), by name.
pub(crate) struct Agents {
    roots: Vec<PathBuf>,
    loaded: AsyncMutex<BTreeMap<String, Arc<LoadedAgent>>>,
    /// Configurations (folder, digest) that could not be loaded, with the problem.
    failed: AsyncMutex<HashMap<(PathBuf, String), String>>,
    /// Held while the folders are looked at on a request's behalf.
    refreshing: AsyncMutex<()>,
    /// When the folders were last looked at; they are looked at again at most every two seconds.
    checked: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("roots", &self.roots)
            .finish()
    }
}

fn agent_folders(root: &Path) -> Vec<PathBuf> {
    if root.join(rein_api::AGENT_FILE).is_file() {
        return vec![root.to_owned()];
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(rein_api::AGENT_FILE).is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

impl Agents {
    /// The agents of these folders; none is loaded until [`Agents::refresh`].
    pub(crate) fn new(roots: Vec<PathBuf>) -> Agents {
        Agents {
            roots,
            loaded: AsyncMutex::new(BTreeMap::new()),
            failed: AsyncMutex::new(HashMap::new()),
            refreshing: AsyncMutex::new(()),
            checked: Mutex::new(None),
        }
    }

    /// Looks at the folders again: new agents are loaded, changed ones (their configuration's
    /// digest) loaded again, removed ones dropped. A folder that cannot be loaded keeps its last
    /// good version in service, and the same broken configuration is not tried again until it
    /// changes. Returns problems, one per folder that could not be loaded.
    pub(crate) async fn refresh(&self, rein: &Rein) -> Vec<String> {
        let mut problems = Vec::new();
        let mut loaded = self.loaded.lock().await;
        let mut failed = self.failed.lock().await;
        let mut seen = Vec::new();
        for root in &self.roots {
            for dir in agent_folders(root) {
                let canonical = dir.canonicalize().unwrap_or(dir.clone());
                let current = loaded.values().find(|a| a.dir() == canonical).cloned();
                let keep = |seen: &mut Vec<String>| {
                    if let Some(a) = &current {
                        seen.push(a.name().to_owned());
                    }
                };
                let digest = match rein_api::agent_digest(&dir) {
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(e.to_string());
                        keep(&mut seen);
                        continue;
                    }
                };
                if let Some(a) = &current
                    && a.digest() == digest
                {
                    seen.push(a.name().to_owned());
                    continue;
                }
                if let Some(problem) = failed.get(&(canonical.clone(), digest.clone())) {
                    problems.push(problem.clone());
                    keep(&mut seen);
                    continue;
                }
                match rein.load(&dir).await {
                    Ok(agent) => {
                        tracing::info!(agent = agent.name(), digest = agent.digest(), dir = %dir.display(), "agent loaded");
                        seen.push(agent.name().to_owned());
                        loaded.insert(agent.name().to_owned(), Arc::new(agent));
                    }
                    Err(e) => {
                        let problem = format!("{}: {e}", dir.display());
                        failed.insert((canonical, digest), problem.clone());
                        problems.push(problem);
                        keep(&mut seen);
                    }
                }
            }
        }
        loaded.retain(|name, _| seen.contains(name));
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        problems
    }

    /// Whether the folders were looked at more than two seconds ago.
    fn stale(&self) -> bool {
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() > Duration::from_secs(2))
    }

    /// The agent of this name, the folders looked at again first if it has been a while.
    pub(crate) async fn get(&self, rein: &Rein, name: &str) -> Option<Arc<LoadedAgent>> {
        if self.stale() {
            // One refresh at a time: requests that queued behind it find the folders fresh.
            let _one = self.refreshing.lock().await;
            if self.stale() {
                for p in self.refresh(rein).await {
                    tracing::warn!(problem = %p, "an agent could not be loaded");
                }
            }
        }
        self.loaded.lock().await.get(name).cloned()
    }

    /// The agent whose folder is `dir`.
    pub(crate) async fn by_dir(&self, dir: &Path) -> Option<Arc<LoadedAgent>> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        self.loaded
            .lock()
            .await
            .values()
            .find(|a| a.dir() == dir)
            .cloned()
    }

    /// The agents loaded now.
    pub(crate) async fn all(&self) -> Vec<Arc<LoadedAgent>> {
        self.loaded.lock().await.values().cloned().collect()
    }
}

/// Everything the handlers share.
pub(crate) struct AppState {
    /// The engine API.
    pub rein: Arc<Rein>,
    /// The agents served.
    pub agents: Agents,
    /// Live events and approval notifications.
    pub hub: Hub,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Per-token request rates.
    pub rate: RateLimiter,
    /// Set once shutdown has begun: readiness fails and no run starts.
    pub stopping: AtomicBool,
    /// Told when shutdown begins, so event streams and long polls end rather than hold the
    /// server open.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Event streams open now, by token id.
    pub streams: Mutex<HashMap<String, usize>>,
    /// Each served configuration's tools list (by digest), made once.
    pub tools_listed: AsyncMutex<HashMap<String, rein_api::v1::ToolsList>>,
    /// Runs driven in the background.
    pub tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("agents", &self.agents)
            .finish()
    }
}

impl AppState {
    /// Whether shutdown has begun.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Begins shutdown: no new runs, readiness fails, streams and long polls end, and the runs
    /// driven here stop at their next durable point.
    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
        let _ = self.rein.stop_driving();
    }

    /// Completes once shutdown has begun.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Takes one of the token's event-stream slots, or says how many it holds.
    pub(crate) fn open_stream(&self, token_id: &str) -> Result<(), usize> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let open = streams.entry(token_id.to_owned()).or_default();
        if *open >= self.limits.max_streams_per_token {
            return Err(*open);
        }
        *open += 1;
        Ok(())
    }

    /// Gives a slot back when a stream ends.
    pub(crate) fn close_stream(&self, token_id: &str) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = streams.get_mut(token_id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(token_id);
            }
        }
    }

    /// Drives a run in the background.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap what has finished, so the set does not grow with every run ever started.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}
