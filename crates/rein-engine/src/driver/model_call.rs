//! A model call with its retries: one provider asked once per try, each try and failure
//! recorded, waits between tries from the provider's `Retry-After` or a jittered backoff (with
//! what was recorded flushed first, as a wait is a stop on the outside world).

use std::time::{Duration, Instant};

use rein_core::{Event, Message, ToolSpec};
use rein_model::ChatRequest;
use tracing::{Instrument, field};

use crate::EngineError;
use crate::driver::Driver;

impl Driver<'_> {
    /// Calls one model, retrying errors that may pass. The outer error is the engine's; the inner
    /// one is the model's last error once no retry is left.
    pub(super) async fn try_model(
        &mut self,
        step: u32,
        provider: &dyn rein_model::Provider,
        system: &str,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<
        Result<(rein_model::ChatResponse, u64), (rein_model::ProviderError, u32)>,
        EngineError,
    > {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.record(Event::ModelRequested {
                step,
                attempt,
                model: provider.model().to_owned(),
                messages: messages.len() as u32,
                tools: tools.len() as u32,
            })
            .await?;
            // Before the run's first model call its start is made durable: a process killed
            // while the model answers leaves a run that can be found and resumed, not one that
            // never was. (Later calls follow an awaited outcome, so the run is on disk already.)
            // A gateway run's start was handed over with the ledger's hold, so only its commit
            // is waited for here; the rest (`model_requested`) goes with the reply, in the
            // request's one other append. Its resume after a crash ends it unanswered either way.
            if step <= 1 && attempt == 1 {
                if self.is_gateway() {
                    self.committed().await?;
                } else {
                    self.flush().await?;
                }
            }
            // What led to the call is on its way to the store while the model answers, so
            // another process reading the run sees the call in flight (a gateway's call lasts
            // no longer than its request, which another process cannot answer).
            if !self.is_gateway() {
                self.submit();
            }
            let span = tracing::info_span!(
                "chat",
                otel.name = %format!("chat {}", provider.model()),
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = provider.kind(),
                gen_ai.request.model = %provider.model(),
                gen_ai.conversation.id = %self.run_id,
                gen_ai.usage.input_tokens = field::Empty,
                gen_ai.usage.output_tokens = field::Empty,
                gen_ai.response.finish_reasons = field::Empty,
                error.r#type = field::Empty,
            );
            let began = Instant::now();
            let result = {
                let request = ChatRequest {
                    system,
                    messages,
                    tools,
                    settings: self.settings.as_ref(),
                };
                provider.complete(&request).instrument(span.clone()).await
            };
            let latency_us = began.elapsed().as_micros() as u64;
            match result {
                Ok(reply) => {
                    span.record("gen_ai.usage.input_tokens", reply.usage.input_tokens as i64);
                    span.record(
                        "gen_ai.usage.output_tokens",
                        reply.usage.output_tokens as i64,
                    );
                    if let Some(reason) = &reply.stop_reason {
                        span.record("gen_ai.response.finish_reasons", reason.as_str());
                    }
                    return Ok(Ok((reply, latency_us)));
                }
                Err(error) => {
                    span.record("error.type", error_type(&error));
                    let will_retry = error.is_retryable() && attempt < self.agent.max_attempts;
                    let wait = will_retry.then(|| {
                        backoff(
                            &self.run_id,
                            step,
                            attempt,
                            error.retry_after(),
                            self.agent.max_backoff,
                        )
                    });
                    self.record(Event::ModelFailed {
                        step,
                        attempt,
                        error: error.to_string(),
                        will_retry,
                        retry_in_ms: wait.map(|w| w.as_millis() as u64),
                    })
                    .await?;
                    match wait {
                        Some(wait) => {
                            self.flush().await?;
                            tokio::time::sleep(wait).await;
                        }
                        None => return Ok(Err((error, attempt))),
                    }
                }
            }
        }
    }
}

fn error_type(error: &rein_model::ProviderError) -> &'static str {
    use rein_model::ProviderError as E;
    match error {
        E::RateLimited { .. } => "rate_limited",
        E::Server { .. } => "server_error",
        E::Timeout { .. } => "timeout",
        E::Rejected { .. } => "rejected",
        E::Account { .. } => "account_refused",
        E::Malformed { .. } => "malformed_response",
        E::Transport { .. } => "transport",
        E::Script(_) => "script",
    }
}

/// How long to wait before try `attempt + 1`: what the provider asked for if it did, otherwise
/// exponential backoff from 250 ms with ±25% jitter; never more than `max`. The jitter is derived
/// from the run, step and attempt, so concurrent runs spread out while each run stays replayable.
pub(crate) fn backoff(
    run_id: &str,
    step: u32,
    attempt: u32,
    asked: Option<Duration>,
    max: Duration,
) -> Duration {
    if let Some(asked) = asked {
        return asked.min(max);
    }
    let base = 250u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run_id
        .bytes()
        .chain(step.to_le_bytes())
        .chain(attempt.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let jitter = (h % 501) as i64 - 250; // -250..=250 per mille of a quarter
    let ms = (base as i64 + base as i64 * jitter / 1000).max(1) as u64;
    Duration::from_millis(ms).min(max)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_honours_retry_after_grows_and_is_capped() {
        let max = Duration::from_secs(10);
        assert_eq!(
            backoff("r", 1, 1, Some(Duration::from_secs(7)), max),
            Duration::from_secs(7)
        );
        assert_eq!(backoff("r", 1, 1, Some(Duration::from_secs(70)), max), max);
        let waits: Vec<Duration> = (1..=4).map(|a| backoff("r", 1, a, None, max)).collect();
        for (i, w) in waits.iter().enumerate() {
            let base = 250u64 << i;
            assert!(
                w.as_millis() as u64 >= base * 3 / 4 && w.as_millis() as u64 <= base * 5 / 4,
                "{w:?} for attempt {}",
                i + 1
            );
        }
        assert_eq!(backoff("r", 1, 30, None, max), max);
        // Same inputs, same wait; other runs spread out.
        assert_eq!(backoff("r", 1, 2, None, max), backoff("r", 1, 2, None, max));
        let spread: std::collections::BTreeSet<Duration> = (0..20)
            .map(|i| backoff(&format!("run{i}"), 1, 2, None, max))
            .collect();
        assert!(spread.len() > 5);
    }
}
