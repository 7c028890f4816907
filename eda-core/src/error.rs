use std::error::Error as StdError;

use uuid::Uuid;

use crate::envelope::OwnedStreamId;

/// A failure of an [`EventStore`](crate::EventStore).
///
/// Errors carry their cause as [`source`](StdError::source) and do not repeat its
/// text in their own message, so an error-chain printer (`anyhow`'s `{:#}`, or a
/// loop over `source()`) shows each cause once: "event store backend failed: db
/// error: ERROR: ...".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's version was not the expected one: another writer appended first.
    /// Nothing of the batch was stored.
    #[error("version conflict on {stream}: expected version {expected}, found {actual}")]
    Conflict {
        /// The stream appended to.
        stream: OwnedStreamId,
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
    /// An append carried an idempotency key the store already holds (a retried
    /// command that raced its first execution). Nothing of the batch was stored.
    #[error("idempotency key `{key}` is already stored")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A runner's checkpoint was not where this runner last saw it: another runner
    /// of the same name moved it (see
    /// [`EventStore::write_checkpoint`](crate::EventStore::write_checkpoint)), and
    /// this one lost its turn. Nothing was changed; read the checkpoint again and
    /// go on from there.
    #[error("checkpoint `{name}` was moved by another runner: expected {}, found {}", at(*.expected), at(*.found))]
    CheckpointMoved {
        /// The checkpoint's name.
        name: String,
        /// The position the write was decided on (`None`: no checkpoint yet).
        expected: Option<u64>,
        /// The position stored when the write was attempted (`None`: none stored).
        found: Option<u64>,
    },
    /// A name or id that not every store can keep, refused the same way by every
    /// store before anything is stored (see the README's limits); also a store
    /// option that names something invalid (a PostgreSQL schema name), and a
    /// read model that cannot be started or rebuilt as asked.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was refused: `aggregate id`, `aggregate type`, `event name`,
        /// `idempotency key`, `checkpoint name`, `parked error`, `schema name`;
        /// for a read model, `projection version` (built by a newer version, or
        /// by an older one without a `#[reset]` method) and `rebuild`.
        what: &'static str,
        /// Why.
        reason: String,
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
    /// The append was sent, but the connection was lost (or the task sending it
    /// was cancelled) before its answer came: it may or may not be stored. Read the
    /// stream, or retry the command with the same idempotency key, which is safe
    /// either way.
    #[error("the append's outcome is unknown: it may or may not be stored")]
    OutcomeUnknown {
        /// What cut the append off, when there is an error to show.
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// The store was closed ([`App::close`](crate::App::close)); nothing more is
    /// read or written through it.
    #[error("the event store is closed")]
    Closed,
    /// The SQLite database file was deleted or replaced while the store had it
    /// open. Appends are refused from then on, since they would go to a file no
    /// one can open again.
    #[error("the database file {} was deleted or replaced while the store had it open", path.display())]
    FileChanged {
        /// The path the store was opened with.
        path: std::path::PathBuf,
    },
    /// An append carried more events than the store takes at once; nothing was
    /// stored. Split the command's work, or decide fewer, larger events.
    #[error("an append of {events} events exceeds the limit of {max} events per append")]
    TooManyEvents {
        /// Events in the refused append.
        events: usize,
        /// The most one append may carry on this store.
        max: usize,
    },
    /// `PostgresStore::append_in` was called on a transaction that had already
    /// written: that earlier write fixed the transaction's place in the global log
    /// before the aggregate's version was checked, so the append is refused and
    /// nothing of it was stored. Append first, then write the rest.
    #[error("append_in must be the first write of its transaction")]
    NotFirstWrite,
    /// The database rolled the whole transaction back (a full disk, an I/O error):
    /// none of the appends it held was stored. The appends may be retried.
    #[error("the database rolled the transaction back; nothing of it was stored")]
    RolledBack,
    /// [`close`](crate::EventStore::close) could not move the write-ahead log into
    /// the database file, because another connection (another process, a backup)
    /// kept it open. Every committed event is stored; the `-wal` file still holds some.
    #[error("another connection kept the write-ahead log from being checkpointed")]
    CheckpointBlocked,
    /// An [`EventStore`](crate::EventStore) implementation answered against the
    /// trait's contract (a bug in that store): `App` stops rather than go on with
    /// a state it cannot trust.
    #[error("the event store broke the contract of `{method}`: {what}")]
    BrokenContract {
        /// The trait method.
        method: &'static str,
        /// What it did.
        what: String,
    },
    /// The backend failed (connection, I/O, driver): the cause is the source.
    #[error("event store backend failed")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// The conflict of an append to `stream` decided at `expected` that found `actual`.
    pub(crate) fn conflict(stream: crate::StreamId<'_>, expected: u64, actual: u64) -> Self {
        StoreError::Conflict {
            stream: stream.into_owned(),
            expected,
            actual,
        }
    }
}

/// A checkpoint as an error message shows it.
fn at(checkpoint: Option<u64>) -> String {
    match checkpoint {
        Some(position) => format!("position {position}"),
        None => "none".into(),
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
#[error("cannot decode event `{name}` v{event_version} at position {position} ({aggregate_type} `{aggregate_id}` version {version})")]
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
///
/// `Rejected`, `Store` and `Decode` are transparent: they display as the error
/// inside, so a rejection's message can be shown to a user as it is (an HTTP
/// handler returning `e.to_string()` shows "insufficient funds", not an eda prefix).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate's rules rejected the command. Nothing was stored.
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept appending to the aggregate: every retry met a newer version.
    /// Nothing was stored.
    #[error("version conflict on {stream} after {attempts} attempts: expected version {expected}, found {actual}")]
    Conflict {
        /// The aggregate's stream.
        stream: OwnedStreamId,
        /// The version the last attempt was decided on.
        expected: u64,
        /// The version found in the store.
        actual: u64,
        /// How many times the command was decided.
        attempts: u32,
    },
    /// The idempotency key was first used for another request: another command
    /// type, another aggregate, or the same command with other arguments. A client
    /// reused a key it should not have. Nothing was stored.
    #[error("idempotency key `{key}` was first used by `{first_command}` on {first_stream}{}", if *other_arguments { " with other arguments" } else { "" })]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The command the key was first used by.
        first_command: String,
        /// The stream the key was first used on.
        first_stream: OwnedStreamId,
        /// Same command and aggregate, but the command's fields differed.
        other_arguments: bool,
    },
    /// An event cannot be stored as exactly what was decided. Nothing was stored.
    #[error("event `{event}` cannot be stored")]
    Encode {
        /// Name of the event.
        event: &'static str,
        /// What is wrong with it.
        #[source]
        source: EncodeError,
    },
    /// The store failed. [`StoreError::OutcomeUnknown`] means the append may have
    /// been stored: retry with the same idempotency key.
    #[error(transparent)]
    Store(StoreError),
    /// A stored event of the aggregate could not be decoded.
    #[error(transparent)]
    Decode(DecodeError),
    /// The aggregate declares `services = Type`, but the `App` was built without a
    /// value of that type. Nothing was stored; give it with
    /// [`AppBuilder::services`](crate::AppBuilder::services).
    #[error("{aggregate_type} needs services of type `{services}`, but the app has none: build it with `App::builder(..).services(value)`")]
    MissingServices {
        /// Aggregate type.
        aggregate_type: &'static str,
        /// The services type, as [`std::any::type_name`] spells it.
        services: &'static str,
    },
}

/// Why an event cannot be stored: its stored form would not read back as the
/// event that was decided, so the state rebuilt by replay would differ from the
/// state the command produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Serialization failed (a map with keys that are not strings, a failing
    /// `Serialize` impl).
    #[error("it does not serialize")]
    Serialize(#[source] serde_json::Error),
    /// A float that JSON cannot represent: `serde_json` would write `null`, which
    /// does not read back.
    #[error("`{path}` is {value}, which JSON cannot represent")]
    NonFinite {
        /// Where the value is: field names and indexes from the event's root.
        path: String,
        /// The value (NaN or an infinity).
        value: f64,
    },
    /// The stored form does not decode as the event type.
    #[error("its stored form {payload} does not read back")]
    Unreadable {
        /// The serialized event.
        payload: String,
        /// Why decoding failed.
        #[source]
        source: DecodeErrorKind,
    },
    /// The stored form decodes as another value (a `#[serde(skip)]` field, a
    /// lossy `Serialize`/`Deserialize` pair).
    #[error("its stored form {payload} reads back as {read_back}")]
    Changed {
        /// The serialized event.
        payload: String,
        /// What decoding it gives (`Debug`).
        read_back: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of `error` and its sources, as an error-chain printer shows them.
    fn chain(error: &(dyn StdError + 'static)) -> Vec<String> {
        let mut out = vec![error.to_string()];
        let mut source = error.source();
        while let Some(cause) = source {
            out.push(cause.to_string());
            source = cause.source();
        }
        out
    }

    #[test]
    fn causes_are_sources_shown_once() {
        let serde = serde_json::from_str::<u64>("\"x\"").unwrap_err();
        let cause = serde.to_string();
        let decode = DecodeError {
            position: 7,
            aggregate_type: "Account".into(),
            aggregate_id: "a".into(),
            version: 2,
            name: "Opened".into(),
            event_version: 1,
            kind: DecodeErrorKind::Payload(serde),
        };
        let error: CommandError<std::io::Error> = CommandError::Decode(decode);
        assert_eq!(
            chain(&error),
            [
                "cannot decode event `Opened` v1 at position 7 (Account `a` version 2)",
                "payload does not match the event type",
                cause.as_str(),
            ]
        );
        let backend = StoreError::Backend("disk full".into());
        assert_eq!(
            chain(&CommandError::<std::io::Error>::Store(backend)),
            ["event store backend failed", "disk full"]
        );
        let rejected: CommandError<std::io::Error> =
            CommandError::Rejected(std::io::Error::other("insufficient funds"));
        assert_eq!(chain(&rejected), ["insufficient funds"]);
    }

    #[test]
    fn a_moved_checkpoint_says_what_was_expected_and_found() {
        let moved = |expected, found| StoreError::CheckpointMoved {
            name: "mailer".into(),
            expected,
            found,
        };
        assert_eq!(
            moved(Some(4), Some(7)).to_string(),
            "checkpoint `mailer` was moved by another runner: expected position 4, found position 7"
        );
        assert_eq!(
            moved(None, Some(3)).to_string(),
            "checkpoint `mailer` was moved by another runner: expected none, found position 3"
        );
        assert_eq!(
            moved(Some(2), None).to_string(),
            "checkpoint `mailer` was moved by another runner: expected position 2, found none"
        );
    }
}
