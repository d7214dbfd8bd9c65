//! Reading rows back: runs' summaries, approvals and events as the store's types, with what a
//! row holds that this build cannot read reported, not guessed.

use rein_core::{EVENT_FORMAT_VERSION, EndState, Event, StoredEvent};

use crate::{ApprovalSummary, RunSummary, StoreError};

pub(super) fn parse_status(
    run_id: &str,
    raw: Option<String>,
) -> Result<Option<EndState>, StoreError> {
    raw.map(|s| {
        serde_json::from_value(serde_json::Value::String(s.clone())).map_err(|_| {
            StoreError::Corrupt {
                run_id: run_id.into(),
                seq: 0,
                detail: format!("unknown status `{s}`"),
            }
        })
    })
    .transpose()
}

pub(super) const APPROVAL_COLUMNS: &str = "a.id, a.run_id, a.call_id, a.tool, a.status, a.created_ms, a.expires_ms, a.decided_by, r.tenant, a.args";

pub(super) fn approval_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalSummary> {
    Ok(ApprovalSummary {
        id: row.get(0)?,
        run_id: row.get(1)?,
        call_id: row.get(2)?,
        tool: row.get(3)?,
        status: row.get(4)?,
        created_ms: row.get::<_, i64>(5)? as u64,
        expires_ms: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        decided_by: row.get(7)?,
        tenant: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
        args: row
            .get::<_, Option<String>>(9)?
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or(serde_json::Value::Null),
    })
}

/// A run's summary columns; the last event's position and time come from the events' key.
pub(super) const SUMMARY_COLUMNS: &str = "id, agent, task, status, created_ms,
    (SELECT at_ms FROM events WHERE run_id = runs.id ORDER BY seq DESC LIMIT 1),
    (SELECT MAX(seq) FROM events WHERE run_id = runs.id), steps, user, tenant, parent_run,
    cost_micros";

pub(super) fn summary_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(RunSummary, Option<String>)> {
    Ok((
        RunSummary {
            id: row.get(0)?,
            agent: row.get(1)?,
            task: row.get(2)?,
            status: None,
            created_ms: row.get::<_, i64>(4)? as u64,
            updated_ms: row.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
            events: row.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64,
            steps: row.get::<_, i64>(7)? as u32,
            user: row.get(8)?,
            tenant: row.get(9)?,
            parent: row.get(10)?,
            cost_micros: row.get::<_, i64>(11)?.max(0) as u64,
        },
        row.get(3)?,
    ))
}

/// The events of a run from the rows of a query (seq, at_ms, payload, format).
pub(super) fn decode_events(
    run_id: &str,
    rows: impl Iterator<Item = rusqlite::Result<(u64, u64, String, u32)>>,
    db_err: impl Fn(rusqlite::Error) -> StoreError,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        let (seq, at_ms, payload, format) = row.map_err(&db_err)?;
        if format > EVENT_FORMAT_VERSION {
            return Err(StoreError::NewerEvent {
                run_id: run_id.into(),
                seq,
                found: format,
                supported: EVENT_FORMAT_VERSION,
            });
        }
        let event: Event = serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt {
            run_id: run_id.into(),
            seq,
            detail: e.to_string(),
        })?;
        out.push(StoredEvent { seq, at_ms, event });
    }
    Ok(out)
}
