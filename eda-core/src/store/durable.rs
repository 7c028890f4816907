//! What the durable stores (SQLite, PostgreSQL) share: the append they hand to
//! another thread or task, and conversions to their drivers' terms.

use crate::envelope::{IdempotencyRecord, Metadata, NewEvent, StreamId};
use crate::error::StoreError;
use crate::store::Appended;

/// A driver's error as [`StoreError::Backend`].
pub(crate) fn backend(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// An append handed to another thread or task (the SQLite writer, a PostgreSQL
/// committing task), with the channel its answer goes back on.
pub(crate) struct AppendRequest<R = Result<Appended, StoreError>> {
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) expected_version: u64,
    pub(crate) events: Vec<NewEvent>,
    /// JSON text.
    pub(crate) metadata: String,
    /// The idempotency key's record, without its position, if the append has a key.
    pub(crate) idempotency: Option<Box<IdempotencyRecord>>,
    pub(crate) reply: tokio::sync::oneshot::Sender<R>,
}

impl<R> AppendRequest<R> {
    /// Takes a copy of the append, to send it away.
    pub(crate) fn new(
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
        reply: tokio::sync::oneshot::Sender<R>,
    ) -> Result<AppendRequest<R>, StoreError> {
        Ok(AppendRequest {
            aggregate_type: stream.aggregate_type.to_owned(),
            aggregate_id: stream.aggregate_id.to_owned(),
            expected_version,
            idempotency: IdempotencyRecord::of_append(
                stream,
                expected_version,
                events.len(),
                metadata,
                None,
            )
            .map(Box::new),
            events,
            metadata: serde_json::to_string(metadata).map_err(backend)?,
            reply,
        })
    }

    /// The record the append leaves for its idempotency key, with the position of
    /// its last event. (PostgreSQL's statements fill the record in themselves.)
    #[cfg(feature = "sqlite")]
    pub(crate) fn idempotency_record(&self, position: Option<u64>) -> Option<IdempotencyRecord> {
        let mut record = self.idempotency.as_deref()?.clone();
        record.position = position.filter(|_| !self.events.is_empty());
        Some(record)
    }

    pub(crate) fn stream(&self) -> StreamId<'_> {
        StreamId {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
        }
    }
}

/// A version or position as the databases' signed 64-bit integer.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
