//! Runtime of the [eda](https://docs.rs/eda) framework.
//!
//! Domain crates depend on the `eda` facade, which re-exports this crate's public
//! API together with the attribute macros of `eda-derive`. The code those macros
//! generate names this crate only through `__private` (hidden, not public API),
//! which re-exports the traits and helpers it calls from the files of their
//! concepts; the facade pins both crates to one exact version, so a mismatched
//! pair cannot build.

mod aggregate;
mod app;
pub mod bus;
mod codec;
mod command;
mod envelope;
mod error;
mod event;
mod event_id;
mod failpoint;
mod policy;
mod projection;
mod registry;
pub mod resilience;
mod store;
pub mod testing;

#[doc(hidden)]
pub mod __private;

pub use aggregate::{Aggregate, AggregateEvent, AggregateId, Handle, IntoEvents};
pub use app::{App, AppBuilder, Committed, Execute, ExecuteFuture};
pub use bus::{Bus, LocalBus};
pub use command::{Command, HandledCommand};
pub use envelope::{
    EventRef, IdempotencyRecord, Metadata, NewEvent, OwnedStreamId, RecordedEvent, ReplayEvent,
    Snapshot, StreamId,
};
pub use error::{
    CommandError, DecodeError, DecodeErrorKind, EncodeError, LoadError, RegistryError, StoreError,
};
pub use event::Event;
pub use event_id::new_event_id;
pub use policy::{IntoReactions, Policy, PolicyBuilder, PolicyHandle, Reactions};
pub use projection::{
    read_model, ApplyError, MemoryProjection, ParkedEvent, Progress, Projection, ProjectionBuilder,
    ProjectionHandle, Retried, RunnerState, RunnerStatus, WaitError,
};
#[cfg(feature = "postgres")]
pub use projection::{
    BoxedParams, PostgresBatch, PostgresParams, PostgresProjection, PostgresProjectionBuilder,
};
#[cfg(feature = "sqlite")]
pub use projection::{SqliteProjection, SqliteProjectionBuilder};
pub use registry::{registry, DecodeFn, EventRegistration, Registry};
#[cfg(feature = "postgres")]
pub use store::postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use store::sqlite::{SqliteOptions, SqliteStore, SqliteSynchronous};
pub use store::{
    check_checkpoint_name, check_idempotency_key, check_names, check_stream, memory::MemoryStore,
    Appended, EventStore, ImmediateStore, LogCount, LogPage, MAX_AGGREGATE_ID_BYTES,
    MAX_IDEMPOTENCY_KEY_BYTES, MAX_NAME_BYTES,
};
/// Event, correlation and causation ids are UUIDs (re-exported so users need no `uuid` dependency).
pub use uuid::Uuid;
