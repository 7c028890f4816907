#![doc = include_str!("../README.md")]

pub use eda_core::*;
pub use eda_derive::{aggregate, command, event};

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
    pub use crate::{aggregate, command, event};
    pub use crate::{
        Aggregate, AggregateEvent, App, Command, CommandError, Committed, Event, EventStore,
        LoadError, MemoryStore, StoreError,
    };
}
