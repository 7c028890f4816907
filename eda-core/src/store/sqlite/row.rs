//! Rows as eda's types: a row that does not have the stored shape is a
//! [`StoreError::Corrupt`] naming its position.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::envelope::{Metadata, RecordedEvent, ReplayEvent};
use crate::error::StoreError;
use crate::projection::ParkedEvent;
use crate::store::durable::backend;

/// A row's columns, each read with a [`StoreError::Corrupt`] naming the row's
/// position when it does not have the stored type.
struct Columns<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    position: u64,
}

impl<'a, 'r> Columns<'a, 'r> {
    /// `row`, whose first column is its position.
    fn of(row: &'a rusqlite::Row<'r>) -> Result<Self, StoreError> {
        let position: i64 = row.get(0).map_err(backend)?;
        Ok(Columns {
            row,
            position: u64::try_from(position).unwrap_or_default(),
        })
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            position: self.position,
            what,
        }
    }

    fn value(&self, i: usize) -> Result<rusqlite::types::ValueRef<'_>, StoreError> {
        self.row
            .get_ref(i)
            .map_err(|e| self.corrupt(format!("column {i}: {e}")))
    }

    fn text(&self, i: usize, name: &str) -> Result<String, StoreError> {
        self.value(i)?
            .as_str()
            .map(str::to_owned)
            .map_err(|e| self.corrupt(format!("{name} is not text: {e}")))
    }

    fn integer(&self, i: usize, name: &str) -> Result<i64, StoreError> {
        self.value(i)?
            .as_i64()
            .map_err(|e| self.corrupt(format!("{name} is not an integer: {e}")))
    }
}

pub(super) fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        events.push(recorded(row)?);
    }
    Ok(events)
}

/// One row as a [`RecordedEvent`]; a row that does not have the stored shape is a
/// [`StoreError::Corrupt`] naming its position.
fn recorded(row: &rusqlite::Row<'_>) -> Result<RecordedEvent, StoreError> {
    let columns = Columns::of(row)?;
    let event_id = columns
        .value(1)?
        .as_blob()
        .ok()
        .and_then(|bytes| Uuid::from_slice(bytes).ok())
        .ok_or_else(|| columns.corrupt("event_id is not a 16-byte id".into()))?;
    let metadata = columns.text(8, "metadata")?;
    let metadata: Metadata = serde_json::from_str(&metadata)
        .map_err(|e| columns.corrupt(format!("metadata is not valid: {e}")))?;
    let micros = columns.integer(9, "recorded_at")?;
    Ok(RecordedEvent {
        event_id,
        aggregate_type: columns.text(2, "aggregate_type")?,
        aggregate_id: columns.text(3, "aggregate_id")?,
        version: u64::try_from(columns.integer(4, "version")?)
            .map_err(|_| columns.corrupt("negative version".into()))?,
        position: columns.position,
        name: columns.text(5, "name")?,
        event_version: u32::try_from(columns.integer(6, "event_version")?)
            .map_err(|_| columns.corrupt("event_version out of range".into()))?,
        payload: columns.text(7, "payload")?,
        metadata,
        recorded_at: DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default(),
    })
}

/// A [`PARKED`](super::sql::PARKED) row; one that does not have the stored shape
/// is a [`StoreError::Corrupt`] naming its position.
pub(super) fn parked(row: &rusqlite::Row<'_>) -> Result<ParkedEvent, StoreError> {
    let columns = Columns::of(row)?;
    let event_id = columns
        .value(1)?
        .as_blob()
        .ok()
        .and_then(|bytes| Uuid::from_slice(bytes).ok())
        .ok_or_else(|| columns.corrupt("parked event_id is not a 16-byte id".into()))?;
    let micros = columns.integer(6, "parked_at")?;
    Ok(ParkedEvent {
        position: columns.position,
        event_id,
        aggregate_type: columns.text(2, "aggregate_type")?,
        aggregate_id: columns.text(3, "aggregate_id")?,
        name: columns.text(4, "name")?,
        error: columns.text(5, "error")?,
        parked_at: DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default(),
    })
}

/// A [`READ_FOR_REPLAY`](super::sql::READ_FOR_REPLAY) row; one that does not have
/// the stored shape is a [`StoreError::Corrupt`] naming its position.
pub(super) fn replay_event(row: &rusqlite::Row<'_>) -> Result<ReplayEvent, StoreError> {
    let columns = Columns::of(row)?;
    Ok(ReplayEvent {
        position: columns.position,
        version: u64::try_from(columns.integer(1, "version")?)
            .map_err(|_| columns.corrupt("negative version".into()))?,
        name: columns.text(2, "name")?,
        event_version: u32::try_from(columns.integer(3, "event_version")?)
            .map_err(|_| columns.corrupt("event_version out of range".into()))?,
        payload: columns.text(4, "payload")?,
    })
}
