//! Approvals: list, the card, and decisions.

use std::path::Path;

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
                provenance,
                ..
            } if *approval_id == summary.id => Some((
                args.clone(),
                policies.clone(),
                reasons.clone(),
                labels.clone(),
                provenance.clone(),
            )),
            _ => None,
        });
        let Some((arguments, policies, reasons, labels, provenance)) = request else {
            return Err(Error::Internal(format!(
                "approval {} has no request in run {}'s log",
                summary.id, summary.run_id
            )));
        };
        let started = events.iter().find_map(|e| match &e.event {
            Event::RunStarted(s) => Some(s),
            _ => None,
        });
        let diff = match (summary.tool.as_str(), started) {
            ("fs.write", Some(s)) => write_diff(Path::new(&s.workspace), &arguments),
            _ => None,
        };
        let provenance_text = provenance
            .iter()
            .filter(|(_, origins)| !origins.is_empty())
            .map(|(arg, origins)| format!("{arg}: {}", rein_core::provenance::describe(origins)))
            .collect();
        Ok(v1::ApprovalCard {
            provenance,
            provenance_text,
            diff,
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

/// What an `fs.write` call changes: a unified diff of the file as it is in the run's workspace
/// now against what the call writes (appended, with `append`). A path outside the workspace
/// is not read.
fn write_diff(workspace: &Path, args: &serde_json::Value) -> Option<String> {
    let path = args.get("path")?.as_str()?;
    let content = args.get("content")?.as_str()?;
    let root = workspace.display().to_string();
    let resolved = rein_core::facts::resolve_path(&root, path);
    if !rein_core::facts::within(&root, &resolved) {
        return Some(format!(
            "`{path}` is outside the workspace; the write will be refused"
        ));
    }
    if std::fs::symlink_metadata(&resolved).is_ok_and(|m| m.file_type().is_symlink()) {
        return Some(format!(
            "`{path}` is a symbolic link; the write will be refused"
        ));
    }
    let current = std::fs::read_to_string(&resolved).unwrap_or_default();
    let append = args
        .get("append")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let next = if append {
        format!("{current}{content}")
    } else {
        content.to_owned()
    };
    if current == next {
        return Some("(no change)".into());
    }
    let diff = similar::TextDiff::from_lines(&current, &next);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string(),
    )
}
