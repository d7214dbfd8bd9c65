//! The audit trail: its key, verification (of the log itself, against checkpoints held outside
//! it, and against the event log), inclusion proofs, and its records. Every command first fills
//! in the records a crash left out.

use std::path::Path;

use rein_audit::AuditLog;

use crate::{Error, Rein, convert, v1};

impl Rein {
    /// Fills in what crashes left out of the trail, and signs a checkpoint over it.
    fn fill_trail(&self) -> Result<u64, Error> {
        let engine = self.engine()?;
        let filled = engine.fill_audit()?;
        if filled > 0 {
            engine.audit_log().checkpoint(engine.clock().now_ms())?;
        }
        Ok(filled)
    }

    fn log(&self) -> Result<AuditLog, Error> {
        self.open_audit()
    }

    /// The keys to trust: the one given (`ed25519:<hex>`), or this machine's own.
    fn trusted(&self, public_key: Option<&str>) -> Result<Vec<ed25519_dalek::VerifyingKey>, Error> {
        Ok(match public_key {
            Some(text) => vec![rein_audit::parse_public(text)?],
            None => vec![self.log()?.public_key()],
        })
    }

    /// The public key that signs checkpoints (created on first use).
    pub fn audit_key(&self) -> Result<v1::AuditKey, Error> {
        let log = self.log()?;
        let key = log.public_key();
        Ok(v1::AuditKey {
            public_key: rein_audit::format_public(&key),
            key_id: rein_audit::key_id(&key),
            key_file: log.paths().key.display().to_string(),
        })
    }

    /// Replaces the signing key; the rotation is recorded and signed with the old key. Returns
    /// (old key id, the new key).
    pub fn rotate_audit_key(&self, now_ms: u64) -> Result<(String, v1::AuditKey), Error> {
        let (old, _) = rein_audit::rotate_key(&self.dir.audit(), self.audit_options(), now_ms)?;
        Ok((old, self.audit_key()?))
    }

    /// Verifies the audit log: recomputes it from its records, checks every checkpoint, checks
    /// the log against checkpoints held outside it (`held`: a checkpoint file or a directory of
    /// them; by default the checkpoint directory, when one is set) and against the event log.
    pub fn audit_verify(
        &self,
        public_key: Option<&str>,
        held: Option<&Path>,
    ) -> Result<v1::AuditVerify, Error> {
        let trusted = self.trusted(public_key)?;
        let filled = self.fill_trail()?;
        let held_path = held
            .map(Path::to_owned)
            .or_else(|| self.options.checkpoint_dir.clone().filter(|d| d.is_dir()));
        let held = match &held_path {
            Some(path) => rein_audit::read_held_checkpoints(path)?,
            None => vec![],
        };
        let mut trail = convert::trail(self.engine()?.check_trail()?);
        trail.filled += filled;
        let (report, failure) = match rein_audit::verify_against(&self.dir.audit(), &trusted, &held)
        {
            Ok(report) => (Some(report), None),
            Err(rein_audit::AuditError::Verify(m)) => (None, Some(m)),
            Err(other) => return Err(other.into()),
        };
        let report = report.unwrap_or(rein_audit::VerifyReport {
            records: 0,
            checkpoints: 0,
            uncovered: 0,
            keys: vec![],
        });
        Ok(v1::AuditVerify {
            ok: failure.is_none() && trail.problems.is_empty(),
            records: report.records,
            checkpoints: report.checkpoints,
            uncovered: report.uncovered,
            keys: report.keys,
            held_checkpoints: held.len(),
            failure,
            trail,
        })
    }

    /// The inclusion proof of record `seq` in the latest checkpoint covering it (the log is
    /// verified first).
    pub fn audit_proof(
        &self,
        seq: u64,
        public_key: Option<&str>,
    ) -> Result<v1::InclusionProof, Error> {
        let trusted = self.trusted(public_key)?;
        self.fill_trail()?;
        Ok(rein_audit::prove(&self.dir.audit(), seq, &trusted)?.into())
    }

    /// Checks a proof with nothing but the proof and the public key.
    pub fn verify_proof(proof: v1::InclusionProof, public_key: &str) -> Result<(), Error> {
        let key = rein_audit::parse_public(public_key)?;
        Ok(rein_audit::verify_proof(&proof.into(), &key)?)
    }

    /// Audit records, in order: only those of runs whose id starts with `run`, and only those
    /// from `since_ms` on, when given.
    pub fn audit_records(
        &self,
        run: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<Vec<v1::AuditRecord>, Error> {
        self.fill_trail()?;
        // Only the records asked for are read whole and kept.
        Ok(rein_audit::records_where(&self.dir.audit(), |r| {
            run.is_none_or(|id| r.run_id.as_deref().is_some_and(|rid| rid.starts_with(id)))
                && since_ms.is_none_or(|s| r.at_ms >= s)
        })?
        .into_iter()
        .map(Into::into)
        .collect())
    }

    /// What one tenant's model calls cost over the last `days` days, by day, model, agent and
    /// user, read from the calls themselves (so every model and agent is there, budgeted or not).
    pub fn spend(&self, tenant: &str, days: u64, now_ms: u64) -> Result<Vec<v1::SpendRow>, Error> {
        let day_ms = 86_400_000;
        let since = (now_ms / day_ms).saturating_sub(days.saturating_sub(1)) * day_ms;
        Ok(self
            .store()?
            .spend(tenant, since)?
            .into_iter()
            .map(|r| v1::SpendRow {
                day: r.day,
                model: r.model,
                agent: r.agent,
                user: r.user,
                cost_usd: r.cost_micros as f64 / 1e6,
                tokens: r.tokens,
                calls: r.calls,
            })
            .collect())
    }

    /// Spending against budgets: every ledger line, or those of the given agent, user and
    /// tenant; only periods from `since` on (`2026-11-01`, `2026-11`).
    pub fn usage(
        &self,
        agent: Option<&str>,
        user: Option<&str>,
        tenant: Option<&str>,
        since: Option<&str>,
    ) -> Result<Vec<v1::UsageRow>, Error> {
        let ledger = self.engine()?.ledger()?;
        let wanted: Vec<String> = [("agent", agent), ("user", user), ("tenant", tenant)]
            .into_iter()
            .filter_map(|(scope, name)| name.map(|n| format!("{scope}:{n}")))
            .collect();
        Ok(ledger
            .usage("")?
            .into_iter()
            .filter(|r| wanted.is_empty() || wanted.contains(&r.key))
            .filter(|r| since.is_none_or(|s| r.period == "run" || r.period.as_str() >= s))
            .map(convert::usage_row)
            .collect())
    }
}
