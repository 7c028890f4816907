//! The paths the macros' expansions name: re-exports only, each defined in the
//! file of its concept. Not public API: anything here may change in any release,
//! and the facade's exact-version dependency on `eda-core` keeps the macros and
//! these paths in step.

pub use inventory;
#[cfg(feature = "sqlite")]
pub use rusqlite;
pub use serde;
pub use serde_json;
#[cfg(feature = "postgres")]
pub use tokio_postgres;
pub use uuid::Uuid;

pub use crate::aggregate::{
    services_arg, snapshot_codec, sync_call_of_async_handler, Aggregate, AggregateEvent, Handle,
    IntoEvents, ServicesMatch, SnapshotCodec, SnapshotState,
};
pub use crate::codec::{encode, Probe, ViaPartialEq, WithoutPartialEq};
pub use crate::command::{fingerprint, target_id, Command, HandledCommand, IdMatches};
pub use crate::envelope::RecordedEvent;
pub use crate::error::{DecodeErrorKind, EncodeError};
pub use crate::event::{
    decode_upcast, str_eq, unknown_event, upcast_check, Event, UpcastCheck, UpcastInto,
};
pub use crate::event_id::new_event_id;
pub use crate::policy::{IntoReactions, Policy, Reactions};
#[cfg(feature = "sqlite")]
pub use crate::projection::SqliteProjection;
pub use crate::projection::{read_model, ApplyError, MemoryProjection, Projection};
#[cfg(feature = "postgres")]
pub use crate::projection::{PostgresBatch, PostgresProjection, PostgresTransaction};
pub use crate::registry::{decode_boxed, EventRegistration};
