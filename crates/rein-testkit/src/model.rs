//! A model wrapped for a test: every request is recorded (the system prompt, the conversation, the
//! tools offered), and a hook runs before the call goes through, to change the world, to signal,
//! or to hold the call until the test lets it go.

use std::sync::{Arc, Mutex};

use rein_core::{BoxFuture, Message};
use rein_engine::Agent;
use rein_model::{ChatRequest, ChatResponse, Provider, ProviderError};

/// What a model was asked once.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    /// The system prompt.
    pub system: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// The tools offered, by name.
    pub tools: Vec<String>,
}

impl Asked {
    /// The step this request was for (the model turns before it, plus one).
    pub fn step(&self) -> usize {
        1 + self
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count()
    }
}

type Hook = Box<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>;

/// The agent's model, recorded, with a hook before each call.
pub struct Recorder {
    inner: Arc<dyn Provider>,
    asked: Mutex<Vec<Asked>>,
    before: Hook,
}

impl Recorder {
    /// Every request so far.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

impl Provider for Recorder {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn max_output_tokens(&self) -> u64 {
        self.inner.max_output_tokens()
    }
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            let n = {
                let mut asked = self.asked.lock().unwrap();
                asked.push(Asked {
                    system: request.system.to_owned(),
                    messages: request.messages.to_vec(),
                    tools: request.tools.iter().map(|t| t.name.clone()).collect(),
                });
                asked.len()
            };
            (self.before)(n).await;
            self.inner.complete(request).await
        })
    }
}

/// Wraps the agent's model: `before(n)` is awaited before the `n`th call (from 1) goes through.
pub fn watch(
    agent: &mut Agent,
    before: impl Fn(usize) -> BoxFuture<'static, ()> + Send + Sync + 'static,
) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder {
        inner: agent.provider.clone(),
        asked: Mutex::new(vec![]),
        before: Box::new(before),
    });
    agent.provider = recorder.clone();
    recorder
}

/// [`watch`] with a hook that needs no waiting.
pub fn watch_sync(
    agent: &mut Agent,
    before: impl Fn(usize) + Send + Sync + 'static,
) -> Arc<Recorder> {
    watch(agent, move |n| {
        before(n);
        Box::pin(std::future::ready(()))
    })
}
