//! Rows as eda's types.

use tokio_postgres::Row;

use crate::envelope::{RecordedEvent, ReplayEvent, Snapshot};
use crate::error::StoreError;
use crate::projection::ParkedEvent;
use crate::store::durable::backend;

/// Where a snapshot's version, snapshot version, payload and fingerprint are in a
/// [`LOAD_SNAPSHOT`](super::sql::LOAD_SNAPSHOT) row.
pub(super) const SNAPSHOT_ROW: [usize; 4] = [0, 1, 2, 3];
/// The same in [`READ_FROM_SNAPSHOT`](super::sql::READ_FROM_SNAPSHOT)'s first
/// row, laid out as the events after it.
pub(super) const SNAPSHOT_IN_REPLAY_ROW: [usize; 4] = [1, 5, 2, 6];

/// The snapshot in `row`'s `columns`; one that does not have the stored shape
/// counts as none (the aggregate is then replayed).
pub(super) fn snapshot_row(
    row: &Row,
    [version, snapshot_version, payload, fingerprint]: [usize; 4],
) -> Option<Snapshot> {
    Some(Snapshot {
        version: u64::try_from(row.try_get::<_, i64>(version).ok()?).ok()?,
        snapshot_version: u32::try_from(row.try_get::<_, i64>(snapshot_version).ok()?).ok()?,
        payload: row.try_get(payload).ok()?,
        fingerprint: row.try_get::<_, i64>(fingerprint).ok()? as u64,
    })
}

/// A [`READ_FOR_REPLAY`](super::sql::READ_FOR_REPLAY) row; one that does not
/// have the stored shape is a [`StoreError::Corrupt`] naming its position.
pub(super) fn replay_event(row: &Row) -> Result<ReplayEvent, StoreError> {
    let position = u64::try_from(row.try_get::<_, i64>(0).map_err(backend)?).unwrap_or_default();
    let corrupt = |what: String| StoreError::Corrupt { position, what };
    Ok(ReplayEvent {
        position,
        version: u64::try_from(
            row.try_get::<_, i64>(1)
                .map_err(|e| corrupt(format!("version: {e}")))?,
        )
        .map_err(|_| corrupt("negative version".into()))?,
        payload: row
            .try_get(2)
            .map_err(|e| corrupt(format!("payload: {e}")))?,
        name: row.try_get(3).map_err(|e| corrupt(format!("name: {e}")))?,
        event_version: u32::try_from(
            row.try_get::<_, i32>(4)
                .map_err(|e| corrupt(format!("event_version: {e}")))?,
        )
        .map_err(|_| corrupt("negative event_version".into()))?,
    })
}

/// One row as a [`RecordedEvent`]; a row that does not have the stored shape is a
/// [`StoreError::Corrupt`] naming its position.
pub(super) fn recorded(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position = u64::try_from(row.try_get::<_, i64>(0).map_err(backend)?).unwrap_or_default();
    let corrupt = |what: String| StoreError::Corrupt { position, what };
    let metadata: String = row
        .try_get(8)
        .map_err(|e| corrupt(format!("metadata: {e}")))?;
    let metadata = serde_json::from_str(&metadata)
        .map_err(|e| corrupt(format!("metadata is not valid: {e}")))?;
    Ok(RecordedEvent {
        event_id: row
            .try_get(1)
            .map_err(|e| corrupt(format!("event_id: {e}")))?,
        aggregate_type: row
            .try_get(2)
            .map_err(|e| corrupt(format!("aggregate_type: {e}")))?,
        aggregate_id: row
            .try_get(3)
            .map_err(|e| corrupt(format!("aggregate_id: {e}")))?,
        version: u64::try_from(
            row.try_get::<_, i64>(4)
                .map_err(|e| corrupt(format!("version: {e}")))?,
        )
        .map_err(|_| corrupt("negative version".into()))?,
        position,
        name: row.try_get(5).map_err(|e| corrupt(format!("name: {e}")))?,
        event_version: u32::try_from(
            row.try_get::<_, i32>(6)
                .map_err(|e| corrupt(format!("event_version: {e}")))?,
        )
        .map_err(|_| corrupt("negative event_version".into()))?,
        payload: row
            .try_get(7)
            .map_err(|e| corrupt(format!("payload: {e}")))?,
        metadata,
        recorded_at: row
            .try_get(9)
            .map_err(|e| corrupt(format!("recorded_at: {e}")))?,
    })
}

/// A [`PARKED`](super::sql::PARKED) row; one that does not have the stored shape
/// is a [`StoreError::Corrupt`] naming its position.
pub(super) fn parked(row: &Row) -> Result<ParkedEvent, StoreError> {
    let position = u64::try_from(row.try_get::<_, i64>(0).map_err(backend)?).unwrap_or_default();
    let corrupt = |what: String| StoreError::Corrupt { position, what };
    Ok(ParkedEvent {
        position,
        event_id: row
            .try_get(1)
            .map_err(|e| corrupt(format!("parked event_id: {e}")))?,
        aggregate_type: row
            .try_get(2)
            .map_err(|e| corrupt(format!("aggregate_type: {e}")))?,
        aggregate_id: row
            .try_get(3)
            .map_err(|e| corrupt(format!("aggregate_id: {e}")))?,
        name: row.try_get(4).map_err(|e| corrupt(format!("name: {e}")))?,
        error: row.try_get(5).map_err(|e| corrupt(format!("error: {e}")))?,
        parked_at: row
            .try_get(6)
            .map_err(|e| corrupt(format!("parked_at: {e}")))?,
    })
}
