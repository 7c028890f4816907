use std::error::Error as StdError;
use std::fmt;

use uuid::Uuid;

/// A failure of an [`EventStore`](crate::EventStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's version was not the expected one: another writer appended first.
    /// Nothing of the batch was stored.
    #[error("version conflict on {aggregate_type} `{aggregate_id}`: expected version {expected}, found {actual}")]
    Conflict {
        /// Aggregate type of the stream.
        aggregate_type: String,
        /// Aggregate id of the stream.
        aggregate_id: String,
        /// The version the append was decided on.
        expected: u64,
        /// The stream's version when the append was attempted.
        actual: u64,
    },
    /// An event with this id is already stored (a retried idempotent command).
    /// Nothing of the batch was stored.
    #[error("event {event_id} is already stored")]
    DuplicateEvent {
        /// The id found in the store.
        event_id: Uuid,
    },
    /// A stored row does not have the shape the store writes (edited by hand, or a
    /// damaged file). Reading other rows is unaffected.
    #[error("stored event at position {position} is corrupt: {what}")]
    Corrupt {
        /// Global position of the row.
        position: u64,
        /// What is wrong with it.
        what: String,
    },
    /// The database was written by a newer version of eda; it is never downgraded.
    #[error("the database schema is version {found}, newer than version {supported} that this code knows")]
    IncompatibleSchema {
        /// Schema version found in the database.
        found: u32,
        /// Newest schema version this code knows.
        supported: u32,
    },
    /// The backend failed (connection, I/O, driver).
    #[error("event store backend failed: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// The conflict of an append to `stream` decided at `expected` that found `actual`.
    pub(crate) fn conflict(stream: crate::StreamId<'_>, expected: u64, actual: u64) -> Self {
        StoreError::Conflict {
            aggregate_type: stream.aggregate_type.to_owned(),
            aggregate_id: stream.aggregate_id.to_owned(),
            expected,
            actual,
        }
    }
}

/// Why a stored event could not become a Rust value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// No event of this aggregate has this name.
    #[error("unknown event name")]
    UnknownEvent,
    /// The payload was written by a newer schema version than this code knows.
    #[error("schema version is newer than the newest known version {known}")]
    NewerVersion {
        /// Newest version this code knows.
        known: u32,
    },
    /// The payload is older than every version that has an upcast path.
    #[error("no upcast path from this schema version (oldest known version is {oldest})")]
    NoUpcast {
        /// Oldest version this code decodes.
        oldest: u32,
    },
    /// The payload does not deserialize as the event type.
    #[error("payload does not match the event type")]
    Payload(#[source] serde_json::Error),
}

/// A stored event that could not be decoded, with where it was found.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode event `{name}` v{event_version} at position {position} ({aggregate_type} `{aggregate_id}` version {version}): {kind}")]
#[non_exhaustive]
pub struct DecodeError {
    /// Global position of the event.
    pub position: u64,
    /// Aggregate type of its stream.
    pub aggregate_type: String,
    /// Aggregate id of its stream.
    pub aggregate_id: String,
    /// Version within its stream.
    pub version: u64,
    /// Stored event name.
    pub name: String,
    /// Stored schema version.
    pub event_version: u32,
    /// What went wrong.
    #[source]
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn at(event: &crate::envelope::EventRef<'_>, kind: DecodeErrorKind) -> Self {
        DecodeError {
            position: event.position,
            aggregate_type: event.stream.aggregate_type.to_owned(),
            aggregate_id: event.stream.aggregate_id.to_owned(),
            version: event.version,
            name: event.name.to_owned(),
            event_version: event.event_version,
            kind,
        }
    }
}

/// Two event types registered under the same name and schema version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Both types would decode the same stored events, so neither may win silently.
    #[error("event `{name}` version {version} is declared twice: by `{first}` and by `{second}`")]
    DuplicateEvent {
        /// The shared event name.
        name: &'static str,
        /// The shared schema version.
        version: u32,
        /// Path of one type.
        first: &'static str,
        /// Path of the other type.
        second: &'static str,
    },
}

/// Why [`App::load`](crate::App::load) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Why [`App::execute`](crate::App::execute) did not commit; `E` is the domain error.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate's rules rejected the command. Nothing was stored.
    Rejected(E),
    /// Other writers kept appending to the aggregate: every retry met a newer version.
    /// Nothing was stored.
    Conflict {
        /// Aggregate type.
        aggregate_type: &'static str,
        /// Aggregate id.
        aggregate_id: String,
        /// The version the last attempt was decided on.
        expected: u64,
        /// The version found in the store.
        actual: u64,
        /// How many times the command was decided.
        attempts: u32,
    },
    /// The idempotency key was first used by another command type or on another
    /// aggregate: a client reused a key it should not have. Nothing was stored.
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The command the key was first used by.
        first_command: Option<String>,
        /// Aggregate type and id the key was first used on.
        first_stream: (String, String),
    },
    /// An event could not be serialized.
    Encode {
        /// Name of the event.
        event: &'static str,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// The store failed; whether the append happened is unknown if it was in flight.
    Store(StoreError),
    /// A stored event of the aggregate could not be decoded.
    Decode(DecodeError),
    /// The aggregate declares `services = Type`, but the `App` was built without a
    /// value of that type. Nothing was stored; give it with
    /// [`AppBuilder::services`](crate::AppBuilder::services).
    MissingServices {
        /// Aggregate type.
        aggregate_type: &'static str,
        /// The services type, as [`std::any::type_name`] spells it.
        services: &'static str,
    },
}

impl<E> CommandError<E> {
    /// The domain error, if the rules rejected the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            CommandError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// The domain error, if the rules rejected the command.
    pub fn into_rejection(self) -> Option<E> {
        match self {
            CommandError::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<LoadError> for CommandError<E> {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(e) => CommandError::Store(e),
            LoadError::Decode(e) => CommandError::Decode(e),
        }
    }
}

impl<E: fmt::Display> fmt::Display for CommandError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Rejected(e) => write!(f, "command rejected: {e}"),
            CommandError::Conflict { aggregate_type, aggregate_id, expected, actual, attempts } => write!(
                f,
                "version conflict on {aggregate_type} `{aggregate_id}` after {attempts} attempts: expected version {expected}, found {actual}"
            ),
            CommandError::IdempotencyKeyReused { key, first_command, first_stream } => write!(
                f,
                "idempotency key `{key}` was first used by `{}` on {} `{}`",
                first_command.as_deref().unwrap_or("?"),
                first_stream.0,
                first_stream.1
            ),
            CommandError::Encode { event, .. } => write!(f, "cannot serialize event `{event}`"),
            CommandError::Store(e) => fmt::Display::fmt(e, f),
            CommandError::Decode(e) => fmt::Display::fmt(e, f),
            CommandError::MissingServices { aggregate_type, services } => write!(
                f,
                "{aggregate_type} needs services of type `{services}`, but the app has none: build it with `App::builder(..).services(value)`"
            ),
        }
    }
}

impl<E: StdError + 'static> StdError for CommandError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            CommandError::Rejected(e) => Some(e),
            CommandError::Encode { source, .. } => Some(source),
            CommandError::Store(e) => e.source(),
            CommandError::Decode(e) => e.source(),
            CommandError::Conflict { .. }
            | CommandError::IdempotencyKeyReused { .. }
            | CommandError::MissingServices { .. } => None,
        }
    }
}
