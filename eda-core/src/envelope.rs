use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which stream: an aggregate type and the `Display` form of an instance's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId<'a> {
    /// [`Aggregate::TYPE`](crate::Aggregate::TYPE).
    pub aggregate_type: &'a str,
    /// The aggregate id as text.
    pub aggregate_id: &'a str,
}

/// Context stored with every event of one command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Ties together every message caused, directly or not, by one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Name of the command that produced the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Cow<'static, str>>,
    /// Idempotency key of the command, if it carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Free-form user data (user id, tenant, request id...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

/// An event about to be appended: encoded, with its id already chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id; derived from the idempotency key when the command has one.
    pub event_id: Uuid,
    /// [`Event::NAME`](crate::Event::NAME).
    pub name: Cow<'static, str>,
    /// [`Event::VERSION`](crate::Event::VERSION).
    pub version: u32,
    /// Serialized payload (JSON).
    pub payload: String,
}

/// An event as stored: the envelope plus the encoded payload.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Unique id of the event.
    pub event_id: Uuid,
    /// Aggregate type of the stream.
    pub aggregate_type: String,
    /// Aggregate id of the stream.
    pub aggregate_id: String,
    /// Version within the aggregate: 1 for its first event, without gaps.
    pub version: u64,
    /// Position in the global log: increasing in commit order, starting at 1.
    pub position: u64,
    /// Stored event name.
    pub name: String,
    /// Schema version the payload was written with.
    pub event_version: u32,
    /// Serialized payload (JSON).
    pub payload: String,
    /// Context of the command that produced it.
    pub metadata: Metadata,
    /// When the store accepted it.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The stream this event belongs to.
    pub fn stream(&self) -> StreamId<'_> {
        StreamId {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
        }
    }
}

/// Milliseconds since the Unix epoch, for time-ordered event ids.
pub(crate) fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh UUIDv7 at `millis`: time-ordered (database indexes stay append-mostly),
/// with 74 random bits.
pub(crate) fn event_id_at(millis: u64) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid()
}
