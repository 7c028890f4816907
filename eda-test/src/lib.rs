//! What eda's own tests, examples and benchmarks share, as `sqlx-test` is for sqlx:
//! the bank and tally domains, the behaviour every store must show (the conformance suite),
//! load through `App`, and helpers for calling stores directly. Not published.
//!
//! Helpers for one store are behind that store's feature (`sqlite`, `postgres`),
//! which turns on eda's: the root package forwards its own features here, so a
//! test built without a store does not build its helpers either.

pub mod bank;
pub mod bank_load;
pub mod conformance;
pub mod crash;
mod events;
pub mod ledger;
pub mod messages;
pub mod nats;
pub mod read_models;
mod routed;
pub mod tally;
mod yielding;

#[cfg(feature = "sqlite")]
pub mod appends;
#[cfg(feature = "postgres")]
pub mod ledger_pg;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod services;

pub use events::{meta, new_event, stored_amounts, stream};
pub use routed::{Route, Routed};
pub use yielding::YieldingStore;
