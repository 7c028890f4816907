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

impl StreamId<'_> {
    /// An owned copy, for errors and records that outlive the borrow.
    pub fn into_owned(self) -> OwnedStreamId {
        OwnedStreamId {
            aggregate_type: self.aggregate_type.to_owned(),
            aggregate_id: self.aggregate_id.to_owned(),
        }
    }
}

/// A [`StreamId`] that owns its strings: how errors name a stream
/// ([`StoreError::Conflict`](crate::StoreError::Conflict),
/// [`CommandError::Conflict`](crate::CommandError::Conflict),
/// [`CommandError::IdempotencyKeyReused`](crate::CommandError::IdempotencyKeyReused)).
/// Displays as ``Account `a-1` ``.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnedStreamId {
    /// [`Aggregate::TYPE`](crate::Aggregate::TYPE).
    pub aggregate_type: String,
    /// The aggregate id as text.
    pub aggregate_id: String,
}

impl OwnedStreamId {
    /// The borrowed form, as the store API takes it.
    pub fn as_stream_id(&self) -> StreamId<'_> {
        StreamId {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
        }
    }
}

impl std::fmt::Display for OwnedStreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.aggregate_type, self.aggregate_id)
    }
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
    /// [`Command::fingerprint`](crate::Command::fingerprint) of the command, kept
    /// with its idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_fingerprint: Option<Uuid>,
    /// Free-form user data (user id, tenant, request id...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

/// What a store keeps of an idempotency key: which command on which aggregate used
/// it, and what that execution appended. Written by
/// [`EventStore::append`](crate::EventStore::append) in the same transaction as
/// the events (also when there are none: a command that changed nothing is
/// remembered too), read by
/// [`EventStore::read_idempotency_key`](crate::EventStore::read_idempotency_key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key.
    pub key: String,
    /// Aggregate type of the stream the command went to.
    pub aggregate_type: String,
    /// Aggregate id of the stream.
    pub aggregate_id: String,
    /// [`Metadata::command`] of the append.
    pub command: String,
    /// [`Metadata::command_fingerprint`] of the append.
    pub fingerprint: Option<Uuid>,
    /// The version the command was decided on; its events, if any, are the
    /// versions after it up to `version`.
    pub expected_version: u64,
    /// The stream's version after the append (`expected_version` for a no-op).
    pub version: u64,
    /// Global position of the last appended event; `None` for a no-op.
    pub position: Option<u64>,
}

impl IdempotencyRecord {
    /// The record an append of `events` events to `stream` at `expected_version`
    /// with `metadata` leaves, if it carries a key.
    pub fn of_append(
        stream: StreamId<'_>,
        expected_version: u64,
        events: usize,
        metadata: &Metadata,
        position: Option<u64>,
    ) -> Option<IdempotencyRecord> {
        Some(IdempotencyRecord {
            key: metadata.idempotency_key.clone()?,
            aggregate_type: stream.aggregate_type.to_owned(),
            aggregate_id: stream.aggregate_id.to_owned(),
            command: metadata.command.as_deref().unwrap_or_default().to_owned(),
            fingerprint: metadata.command_fingerprint,
            expected_version,
            version: expected_version + events as u64,
            position: position.filter(|_| events > 0),
        })
    }
}

/// An aggregate's state at a version, stored so that loading it replays only the
/// events after that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The aggregate version the state includes.
    pub version: u64,
    /// [`Aggregate::SNAPSHOT_VERSION`](crate::Aggregate::SNAPSHOT_VERSION) it was taken with.
    pub snapshot_version: u32,
    /// Fingerprint of the state's shape (its fields, as the default state
    /// serializes); a snapshot whose state type gained, lost or renamed a field is
    /// ignored even if `snapshot_version` was not changed.
    pub fingerprint: u64,
    /// The serialized state (JSON).
    pub payload: String,
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

    /// This event as replay and decoding read it.
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            position: self.position,
            stream: self.stream(),
            version: self.version,
            name: &self.name,
            event_version: self.event_version,
            payload: &self.payload,
        }
    }
}

/// A stored event as replay reads it: what rebuilding an aggregate's state needs.
///
/// [`EventStore::read_for_replay`](crate::EventStore::read_for_replay) and
/// [`EventStore::read_from_snapshot`](crate::EventStore::read_from_snapshot) return
/// these rather than [`RecordedEvent`]s, so that a store can leave out what replay
/// never looks at: the metadata, the recording time, the event id, and the stream's
/// name repeated on every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayEvent {
    /// Position in the global log (named in decode errors).
    pub position: u64,
    /// Version within the aggregate.
    pub version: u64,
    /// Stored event name.
    pub name: String,
    /// Schema version the payload was written with.
    pub event_version: u32,
    /// Serialized payload (JSON).
    pub payload: String,
}

impl From<RecordedEvent> for ReplayEvent {
    fn from(event: RecordedEvent) -> ReplayEvent {
        ReplayEvent {
            position: event.position,
            version: event.version,
            name: event.name,
            event_version: event.event_version,
            payload: event.payload,
        }
    }
}

impl ReplayEvent {
    /// This event of `stream`, as replay reads it.
    pub fn as_event_ref<'a>(&'a self, stream: StreamId<'a>) -> EventRef<'a> {
        EventRef {
            position: self.position,
            stream,
            version: self.version,
            name: &self.name,
            event_version: self.event_version,
            payload: &self.payload,
        }
    }
}

/// A stored event as replay needs it, borrowed from wherever the store keeps it:
/// what [`ImmediateStore::replay_now`](crate::ImmediateStore::replay_now) hands to
/// its callback. [`ReplayEvent::as_event_ref`] gives one from an owned event, and
/// [`EventRef::new`] from the parts a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventRef<'a> {
    /// Global position.
    pub position: u64,
    /// The stream it belongs to.
    pub stream: StreamId<'a>,
    /// Version within its stream.
    pub version: u64,
    /// Stored event name.
    pub name: &'a str,
    /// Schema version of the payload.
    pub event_version: u32,
    /// The payload, JSON text as stored.
    pub payload: &'a str,
}

impl<'a> EventRef<'a> {
    /// The event at `position`, version `version` of `stream`, named `name` at
    /// schema version `event_version`, with its stored `payload`.
    pub fn new(
        position: u64,
        stream: StreamId<'a>,
        version: u64,
        name: &'a str,
        event_version: u32,
        payload: &'a str,
    ) -> Self {
        EventRef {
            position,
            stream,
            version,
            name,
            event_version,
            payload,
        }
    }
}
