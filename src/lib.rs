#![doc = include_str!("../README.md")]

pub use eda_core::{
    bus, check_checkpoint_name, check_idempotency_key, check_names, check_stream, new_event_id,
    read_model, registry, resilience, testing, Aggregate, AggregateEvent, AggregateId, App,
    AppBuilder, Appended, ApplyError, Bus, Command, CommandError, Committed, DecodeError,
    DecodeErrorKind, DecodeFn, EncodeError, Event, EventRef, EventRegistration, EventStore,
    Execute, ExecuteFuture, Handle, HandledCommand, IdempotencyRecord, ImmediateStore, IntoEvents,
    IntoReactions, LoadError, LocalBus, LogCount, LogPage, MemoryProjection, MemoryStore, Metadata,
    NewEvent, OwnedStreamId, ParkedEvent, Policy, PolicyBuilder, PolicyHandle, Progress,
    Projection, ProjectionBuilder, ProjectionHandle, Reactions, RecordedEvent, Registry,
    RegistryError, ReplayEvent, Retried, RunnerState, RunnerStatus, Snapshot, StoreError, StreamId,
    Uuid, WaitError, MAX_AGGREGATE_ID_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_NAME_BYTES,
};
#[cfg(feature = "postgres")]
pub use eda_core::{
    BoxedParams, PostgresBatch, PostgresOptions, PostgresParams, PostgresProjection,
    PostgresProjectionBuilder, PostgresStore,
};
#[cfg(feature = "sqlite")]
pub use eda_core::{
    SqliteOptions, SqliteProjection, SqliteProjectionBuilder, SqliteStore, SqliteSynchronous,
};

/// rusqlite, the SQLite driver: the transaction a SQLite read model's `#[on]`
/// methods take is `eda::rusqlite::Transaction` (re-exported so the versions match).
#[cfg(feature = "sqlite")]
pub use eda_core::__private::rusqlite;
/// tokio-postgres, the PostgreSQL driver: the transaction a PostgreSQL read
/// model's `#[on]` methods take is `eda::tokio_postgres::Transaction`
/// (re-exported so the versions match).
#[cfg(feature = "postgres")]
pub use eda_core::__private::tokio_postgres;
pub use eda_derive::{aggregate, command, event, policy, projection};

#[doc(hidden)]
pub use eda_core::__private;

/// serde, for aggregates that take snapshots:
/// `#[derive(eda::serde::Serialize, eda::serde::Deserialize)] #[serde(crate = "eda::serde")]`.
pub use eda_core::__private::serde;

/// Everything a domain crate and its wiring need: `use eda::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "postgres")]
    pub use crate::PostgresStore;
    #[cfg(feature = "sqlite")]
    pub use crate::SqliteStore;
    pub use crate::{aggregate, command, event, policy, projection};
    pub use crate::{
        Aggregate, AggregateEvent, App, Command, CommandError, Committed, Event, EventStore,
        LoadError, MemoryStore, StoreError,
    };
}
