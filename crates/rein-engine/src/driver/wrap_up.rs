//! The wrap-up turn: when a budget runs out, the model is asked once more, without tools and with
//! a short request of its own, to say what it completed and what it did not; its answer is the
//! run's partial output.

use rein_core::budget::Spend;
use rein_core::text::one_line;
use rein_core::{EndState, Event, Message, Verdict};

use crate::EngineError;
use crate::driver::Driver;
use crate::driver::budget::Hold;
use crate::driver::model_step::{Prompt, WRAP_UP_OUTPUT_TOKENS};

impl Driver<'_> {
    /// The short request of a wrap-up turn: the instructions, the task, and a list of the calls
    /// made and how each went (not their outputs).
    pub(super) fn wrap_up_request(&self, why: &str) -> (String, Vec<Message>) {
        let started = self.state.started();
        let system = started.map(|s| s.instructions.clone()).unwrap_or_default();
        let task = started.map(|s| s.task.clone()).unwrap_or_default();
        let mut done = String::new();
        for slot in self.state.calls() {
            done.push_str(&format!(
                "\n- {} {}: {:?}",
                slot.call.name,
                one_line(&slot.call.arguments.to_string(), 120),
                slot.status
            ));
        }
        if done.is_empty() {
            done.push_str(" none");
        }
        let text = format!(
            "rein: the run must stop now ({why}). You cannot call tools any more. The tool calls so far:{done}\nIn a few sentences, say what you completed, what you did not, and why."
        );
        (
            system,
            vec![Message::User { text: task }, Message::User { text }],
        )
    }

    /// A budget ran out: ask the model once more, without tools, to sum up what it completed and
    /// what it did not (if that still fits), then end the run as `budget_exhausted` with that
    /// summary as its partial output.
    pub(super) async fn wrap_up(&mut self, step: u32, why: String) -> Result<(), EngineError> {
        // A gateway's client gets the refusal itself: there is no run of its own to sum up.
        if self.is_gateway() {
            return self
                .record(Event::RunEnded {
                    status: EndState::BudgetExhausted,
                    output: None,
                    reason: Some(why),
                    call_id: None,
                })
                .await;
        }
        let provider = self
            .agent
            .route_wrap_up
            .clone()
            .unwrap_or_else(|| self.agent.provider.clone());
        let (system, messages) = self.wrap_up_request(&why);
        let (estimate, price) = self.estimate(
            provider.as_ref(),
            &system,
            Prompt::Messages(&messages),
            &[],
            WRAP_UP_OUTPUT_TOKENS,
        );
        let lines = self.budget_lines();
        let held = match self
            .hold(&lines, estimate, Spend::default(), 0, false)
            .await?
        {
            Hold::Held(held) => Some(held),
            Hold::Refused(_) => None,
        };
        let model = provider.model().to_owned();
        let mut output = self.state.last_text().map(str::to_owned);
        let mut note = "no wrap-up turn: it would not fit in the budget either".to_owned();
        if let Some(held) = held {
            let decision = self.judge_model(step, &model).await?;
            let mut actual = Spend::default();
            if decision.verdict == Verdict::Allow
                && let Ok((reply, latency_us)) = self
                    .try_model(step, provider.as_ref(), &system, &messages, &[])
                    .await?
            {
                actual = Spend {
                    tokens: reply.usage.input_tokens + reply.usage.output_tokens,
                    cost_micros: price.map(|p| p.cost_micros(&reply.usage)).unwrap_or(0),
                };
                note = "after a wrap-up turn".to_owned();
                if reply.text.is_some() {
                    output = reply.text.clone();
                }
                self.record(Event::ModelReplied {
                    step,
                    text: reply.text,
                    // No tools were offered: any call in a wrap-up is ignored.
                    tool_calls: vec![],
                    usage: reply.usage,
                    latency_us,
                    stop_reason: reply.stop_reason,
                    stop_sequence: reply.stop_sequence,
                    model: model.clone(),
                    cost_micros: actual.cost_micros,
                })
                .await?;
            }
            self.settle(held, actual, &model).await?;
        }
        self.record(Event::RunEnded {
            status: EndState::BudgetExhausted,
            output,
            reason: Some(format!("{why}; ended {note}")),
            call_id: None,
        })
        .await
    }
}
