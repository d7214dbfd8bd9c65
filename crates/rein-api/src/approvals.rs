//! Approvals: list, the card, and decisions.

use rein_core::Event;
use rein_store::{ApprovalFilter, Store};

use crate::{Error, Rein, convert, v1};

impl Rein {
    /// Approval requests, newest first: the pending ones, or all with `all`; only one tenant's
    /// with `tenant`.
    pub fn list_approvals(
        &self,
        all: bool,
        tenant: Option<&str>,
    ) -> Result<Vec<v1::ApprovalSummary>, Error> {
        Ok(self
            .store()?
            .list_approvals(&ApprovalFilter {
                pending_only: !all,
                tenant: tenant.map(str::to_owned),
                limit: 200,
            })?
            .into_iter()
            .map(convert::approval)
            .collect())
    }

    /// The approval card, rendered from the recorded request (the real arguments), never from
    /// anything the model wrote.
    pub fn approval_card(&self, id: &str) -> Result<v1::ApprovalCard, Error> {
        let store = self.store()?;
        let summary = store.approval(id)?;
        let events = store.events(&summary.run_id)?;
        let request = events.iter().find_map(|e| match &e.event {
            Event::ApprovalRequested {
                approval_id,
                args,
                policies,
                reasons,
                labels,
                ..
            } if *approval_id == summary.id => Some((
                args.clone(),
                policies.clone(),
                reasons.clone(),
                labels.clone(),
            )),
            _ => None,
        });
        let Some((arguments, policies, reasons, labels)) = request else {
            return Err(Error::Internal(format!(
                "approval {} has no request in run {}'s log",
                summary.id, summary.run_id
            )));
        };
        let started = events.iter().find_map(|e| match &e.event {
            Event::RunStarted(s) => Some(s),
            _ => None,
        });
        Ok(v1::ApprovalCard {
            agent: started.map(|s| s.agent.clone()),
            task: started.map(|s| s.task.clone()),
            user: started.map(|s| s.user.clone()),
            tenant: started.map(|s| s.tenant.clone()),
            approval: convert::approval(summary),
            arguments,
            policies,
            reasons,
            labels,
        })
    }

    /// Decides a pending approval (`approved` or not) as `by`, with an optional note. Refused
    /// while the run is being driven, once decided, or (to approve) once expired. The run goes on
    /// when it is resumed.
    pub async fn decide(
        &self,
        id: &str,
        approved: bool,
        by: &str,
        note: Option<String>,
    ) -> Result<v1::ApprovalSummary, Error> {
        let summary = self.store()?.approval(id)?;
        let (redactor, durability) = self.run_context(&summary.run_id)?;
        let decided = self
            .engine()?
            .decide(&summary.id, approved, by, note, &redactor, durability)
            .await?;
        Ok(convert::approval(decided))
    }
}
