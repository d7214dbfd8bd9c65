//! Budgets for one run: the ledger lines it spends from, its admission on the shared ones, and
//! reservations that are released on every path.

use std::sync::Arc;

use rein_core::budget::{Limit, Scope, Spend, Spender};
use rein_core::{EndState, Event};
use rein_store::{BudgetLedger, Exhausted, LedgerLine, LedgerWrite, Queued, Reservation, Settled};

use crate::EngineError;
use crate::driver::Driver;
use crate::lease::LEASE_TTL_MS;

/// A reservation that is settled exactly once: to what the call spent, or, if the call never
/// got that far (an error, a panic, a dropped future), to nothing.
pub(super) struct Held {
    /// The ledger's hold, until it is settled.
    reservation: Option<(Arc<BudgetLedger>, Reservation)>,
    /// What was held.
    amount: Spend,
    /// The lines the run keeps itself (see [`Driver::kept_by_run`]), and what it had spent when
    /// the call was held, to tell whether the call's overrun passed them.
    own: Vec<LedgerLine>,
    spent: Spend,
}

impl Held {
    /// Queues the booking of what the call spent in place of what was held, on its own (an
    /// overrun, whose booking is waited for at once).
    fn settle(mut self, actual: Spend) -> Option<Queued<Settled>> {
        self.reservation
            .take()
            .map(|(ledger, r)| ledger.settle(&r, actual))
    }

    /// The same booking, prepared to go to the store with the run's next append and share its
    /// commit (queued on its own if none comes). A gateway request's booking thus rides with its
    /// ending: one commit fewer per request, and at one request at a time no hand-off to the
    /// store's writer thread at all (its appends are committed on the request's own thread).
    fn settle_later(mut self, actual: Spend) -> Option<(Vec<LedgerWrite>, Queued<Settled>)> {
        self.reservation
            .take()
            .map(|(ledger, r)| ledger.later(|ledger| ledger.settle(&r, actual)))
    }

    /// The lines the run keeps itself that spending `actual` passed.
    fn own_passed(&self, actual: Spend) -> Vec<String> {
        self.own
            .iter()
            .filter(|line| line.over(self.spent.plus(actual)))
            .map(|line| format!("{} {}", line.key, line.period))
            .collect()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((ledger, r)) = self.reservation.take() {
            // Nothing was spent that rein knows of. Queued, not waited for (the writer settles
            // it in order); a failure here lapses with the hold's TTL.
            drop(ledger.settle(&r, Spend::default()));
        }
    }
}

/// Why a hold was refused, for the run's end.
pub(super) enum Hold {
    /// Held (or nothing to hold).
    Held(Option<Held>),
    /// Some line cannot cover it.
    Refused(String),
}

impl Driver<'_> {
    /// The ledger lines this run spends from now: its own (shared with its sub-agents through
    /// the root run's id) and its agent's, user's and tenant's.
    pub(super) fn budget_lines(&self) -> Vec<(Limit, LedgerLine)> {
        let Some(started) = self.state.started() else {
            return vec![];
        };
        let root = self.root_run();
        let who = Spender {
            token: started.token.as_deref(),
            root_run: &root,
            agent: &started.agent,
            user: &started.user,
            tenant: &started.tenant,
        };
        let now = self.engine.clock.now_ms();
        self.agent
            .budgets
            .iter()
            .map(|limit| {
                let (key, period) = rein_core::budget::ledger_line(limit, &who, now);
                (
                    *limit,
                    LedgerLine {
                        key,
                        period,
                        max_tokens: limit.tokens,
                        max_cost_micros: limit.cost_micros,
                    },
                )
            })
            .collect()
    }

    /// Whether the run keeps the line of `limit` itself, from its own log, rather than the
    /// ledger: a gateway run's own budget. Such a run makes at most one model call and has no
    /// sub-agents, so all its line would ever hold is what the run's log already says; kept out
    /// of the ledger, a request spares a reservation, a booking and a row of `budget_spend` per
    /// request that nothing reads again.
    pub(super) fn kept_by_run(&self, limit: &Limit) -> bool {
        limit.scope == Scope::Run
            && self.is_gateway()
            && self.agent.delegates.is_empty()
            // A gateway agent run as another's sub-agent spends from its root's line.
            && self.state.started().is_some_and(|s| s.parent.is_none())
    }

    /// `lines` as (the ones the run keeps itself, the ones in the ledger).
    fn split_lines<'l>(
        &self,
        lines: &'l [(Limit, LedgerLine)],
    ) -> (Vec<&'l LedgerLine>, Vec<&'l LedgerLine>) {
        let (own, shared): (Vec<_>, Vec<_>) =
            lines.iter().partition(|(limit, _)| self.kept_by_run(limit));
        (
            own.into_iter().map(|(_, line)| line).collect(),
            shared.into_iter().map(|(_, line)| line).collect(),
        )
    }

    /// What the run has spent, as its log says.
    fn spent_by_run(&self) -> Spend {
        let usage = self.state.usage();
        Spend {
            tokens: usage.input_tokens + usage.output_tokens,
            cost_micros: self.state.cost_micros(),
        }
    }

    /// Reads what each budget has spent, sets the share the policies see
    /// (`context.budget_percent`), and notes each budget's first pass of its warning level.
    pub(super) async fn check_budgets(
        &mut self,
        lines: &[(Limit, LedgerLine)],
    ) -> Result<(), EngineError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.booked().await?;
        let (_, shared) = self.split_lines(lines);
        let mut from_ledger = if shared.is_empty() {
            Vec::new()
        } else {
            self.engine.ledger()?.spent_on(&shared)?
        }
        .into_iter();
        let own = self.spent_by_run();
        let spent_on: Vec<Spend> = lines
            .iter()
            .map(|(limit, _)| {
                if self.kept_by_run(limit) {
                    own
                } else {
                    from_ledger.next().unwrap_or_default()
                }
            })
            .collect();
        let mut highest = 0;
        for ((limit, line), spent) in lines.iter().zip(spent_on) {
            let percent = spent.percent_of(limit);
            highest = highest.max(percent);
            let id = format!("{} {}", line.key, line.period);
            if percent >= u64::from(limit.warn_percent) && !self.warned.contains(&id) {
                self.warned.push(id.clone());
                self.notice(
                    "budget_warning",
                    &id,
                    format!(
                        "{percent}% spent ({} tokens, ${:.6}); warning level {}%",
                        spent.tokens,
                        spent.cost_micros as f64 / 1e6,
                        limit.warn_percent
                    ),
                    None,
                )
                .await?;
            }
        }
        self.budget_percent = highest;
        Ok(())
    }

    /// Admits the run on the shared budgets before its first model call in this process: when
    /// it declares a budget of its own, what is left of that cap is held on every shared line it
    /// spends from. Returns false (after ending the run `budget_exhausted`) when a shared line
    /// cannot cover it, so contention completes the runs that fit instead of starting them all.
    pub(super) async fn admit(
        &mut self,
        lines: &[(Limit, LedgerLine)],
    ) -> Result<bool, EngineError> {
        if std::mem::replace(&mut self.admission_checked, true) {
            return Ok(true);
        }
        // A sub-agent draws on its root's admission.
        if self.state.started().is_some_and(|s| s.parent.is_some()) {
            return Ok(true);
        }
        let Some((cap, own)) = lines
            .iter()
            .find(|(limit, _)| limit.scope == Scope::Run)
            .map(|(limit, line)| (*limit, line.clone()))
        else {
            return Ok(true);
        };
        let shared: Vec<LedgerLine> = lines
            .iter()
            .filter(|(limit, _)| limit.scope != Scope::Run)
            .map(|(_, line)| line.clone())
            .collect();
        if shared.is_empty() {
            return Ok(true);
        }
        let ledger = self.engine.ledger()?;
        let spent = ledger.spent(&own)?;
        // Only the dimensions the run's own budget bounds can be held; the others are checked
        // call by call.
        let amount = Spend {
            tokens: cap.tokens.map_or(0, |t| t.saturating_sub(spent.tokens)),
            cost_micros: cap
                .cost_micros
                .map_or(0, |c| c.saturating_sub(spent.cost_micros)),
        };
        let now = self.engine.clock.now_ms();
        match ledger
            .admit(&self.run_id, &shared, amount, LEASE_TTL_MS, now)
            .await?
        {
            Ok(_) => Ok(true),
            Err(exhausted) => {
                self.record(Event::RunEnded {
                    status: EndState::BudgetExhausted,
                    output: self.state.last_text().map(str::to_owned),
                    reason: Some(format!(
                        "not admitted: the run's own budget ({} tokens / ${:.6} left) cannot be covered by the shared budgets it spends from, so it ended before its first model call: {exhausted}",
                        amount.tokens,
                        amount.cost_micros as f64 / 1e6
                    )),
                    call_id: None,
                })
                .await?;
                Ok(false)
            }
        }
    }

    /// Gives up what is left of the run's admission (a root run that stops driving).
    pub(super) async fn release_admission(&self) {
        if !self.admission_checked || self.state.started().is_some_and(|s| s.parent.is_some()) {
            return;
        }
        if let Ok(ledger) = self.engine.ledger() {
            let _ = ledger.release_admission(&self.run_id).await;
        }
    }

    /// Holds `amount` on every line for one model call (with `headroom` kept for a wrap-up), for
    /// as long as the call may take. With `with_append`, what the run recorded so far goes to the
    /// store with the hold, sharing its commit (a gateway request's start).
    pub(super) async fn hold(
        &mut self,
        lines: &[(Limit, LedgerLine)],
        amount: Spend,
        headroom: Spend,
        ttl_ms: u64,
        with_append: bool,
    ) -> Result<Hold, EngineError> {
        let spent = self.spent_by_run();
        let (own, shared) = self.split_lines(lines);
        let own: Vec<LedgerLine> = own.into_iter().cloned().collect();
        if let Some(line) = own
            .iter()
            .find(|l| l.over(spent.plus(amount).plus(headroom)))
        {
            let refused = Exhausted::on(line, spent, Spend::default(), amount);
            return Ok(Hold::Refused(refused.to_string()));
        }
        let ledger_lines: Vec<LedgerLine> = shared.into_iter().cloned().collect();
        if ledger_lines.is_empty() {
            if with_append {
                self.submit();
            }
            return Ok(Hold::Held((!own.is_empty()).then_some(Held {
                reservation: None,
                amount,
                own,
                spent,
            })));
        }
        // Settlements waiting to ride go ahead of the hold, in its commit when it goes with the
        // run's events (a planner's call before a gateway's first step leaves one), so the hold
        // counts them; without, each is queued on its own, still ahead of it.
        let mut writes = std::mem::take(&mut self.riding);
        let ledger = self.engine.ledger()?;
        let (hold, reserved) = ledger.later(|ledger| {
            ledger.reserve(
                &self.run_id,
                &self.root_run(),
                &ledger_lines,
                amount,
                headroom,
                ttl_ms.max(LEASE_TTL_MS),
                self.engine.clock.now_ms(),
            )
        });
        writes.extend(hold);
        if with_append {
            self.submit_with(writes);
        } else {
            // Queued now, on their own, in order.
            drop(writes);
        }
        let held = match reserved.await? {
            Ok(reservation) => Hold::Held(Some(Held {
                reservation: Some((ledger, reservation)),
                amount,
                own,
                spent,
            })),
            Err(exhausted) => Hold::Refused(exhausted.to_string()),
        };
        // Committed ahead of the hold or with it; a failure drops the hold, settling it to
        // nothing.
        self.booked().await?;
        Ok(held)
    }

    /// Settles a call's hold and notes an overrun: the provider answered with more than the cap
    /// it was sent (or priced it higher), so the ledger may now pass a limit. A call that spent
    /// no more than it held has nothing to note: its booking rides with the run's next append
    /// and is awaited with it (at the next flush) or before the budgets are read or held again,
    /// so the run waits for the ledger once per model call, not twice.
    pub(super) async fn settle(
        &mut self,
        held: Option<Held>,
        actual: Spend,
        model: &str,
    ) -> Result<(), EngineError> {
        let Some(held) = held else {
            return Ok(());
        };
        let reserved = held.amount;
        let over = actual.tokens > reserved.tokens || actual.cost_micros > reserved.cost_micros;
        let own_passed = if over {
            held.own_passed(actual)
        } else {
            Vec::new()
        };
        if !over {
            if let Some((writes, booking)) = held.settle_later(actual) {
                self.riding.extend(writes);
                self.settling.push(booking);
            }
            return Ok(());
        }
        let mut passed = match held.settle(actual) {
            Some(booking) => booking.await?.over_limit,
            None => Vec::new(),
        };
        passed.extend(own_passed);
        let past = if passed.is_empty() {
            String::new()
        } else {
            format!("; now past the limit of {}", passed.join(", "))
        };
        self.notice(
            "budget_overrun",
            model,
            format!(
                "the call spent {} tokens / ${:.6}, more than the {} tokens / ${:.6} held for it (the provider passed the cap it was sent){past}",
                actual.tokens,
                actual.cost_micros as f64 / 1e6,
                reserved.tokens,
                reserved.cost_micros as f64 / 1e6
            ),
            None,
        )
        .await
    }

    /// Waits until the settlements queued so far are booked (those waiting to ride with the
    /// next append go now, with what is recorded and not yet handed over, or on their own).
    pub(super) async fn booked(&mut self) -> Result<(), EngineError> {
        if !self.riding.is_empty() {
            let writes = std::mem::take(&mut self.riding);
            self.submit_with(writes);
        }
        for booking in std::mem::take(&mut self.settling) {
            booking.await?;
        }
        Ok(())
    }
}
