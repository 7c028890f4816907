//! A read model of the bank domain for the read-side tests and benchmarks:
//! balances by account, and one row per application of an event, so that an
//! event applied twice shows up: in SQLite here (feature `sqlite`), in
//! PostgreSQL in [`ledger_pg`](crate::ledger_pg); both read back into
//! [`LedgerRows`], from a log [`fill`] makes.

use std::collections::BTreeMap;

use eda::prelude::*;
use eda::{Metadata, NewEvent};

#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "sqlite")]
pub use sqlite::{add, create, read, Ledger, LedgerV2};

/// What a ledger holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LedgerRows {
    /// Balance by account.
    pub balances: BTreeMap<String, i64>,
    /// How many times each event (by id) was applied.
    pub applications: BTreeMap<String, u32>,
}

impl LedgerRows {
    /// The events applied more than once.
    pub fn applied_twice(&self) -> usize {
        self.applications.values().filter(|n| **n > 1).count()
    }

    /// Panics unless these rows, of the read model `name`, have every event
    /// applied once and equal `rebuilt`, a clean rebuild's.
    pub fn assert_rebuilt(&self, name: &str, rebuilt: &LedgerRows) {
        assert_eq!(self.applied_twice(), 0, "{name}: events applied twice");
        assert!(
            self == rebuilt,
            "{name}: the read model differs from a clean rebuild"
        );
    }
}

/// Appends `accounts` accounts with `deposits` deposits each straight to the
/// store, one append per account. Returns the number of events.
pub async fn fill<S: EventStore>(store: &S, accounts: usize, deposits: usize) -> u64 {
    let event = |name: &'static str, payload: String| NewEvent {
        event_id: eda::new_event_id(),
        name: name.into(),
        version: 1,
        payload,
    };
    let mut stored = 0;
    for account in 0..accounts {
        let id = format!("acc-{account}");
        let stream = eda::StreamId {
            aggregate_type: "Account",
            aggregate_id: &id,
        };
        let mut events = vec![event(
            "AccountOpened",
            format!(r#"{{"owner":"o{account}"}}"#),
        )];
        events.extend(
            (1..=deposits).map(|n| event("MoneyDeposited", format!(r#"{{"amount":{n}}}"#))),
        );
        stored += events.len() as u64;
        store
            .append(stream, 0, events, &Metadata::default())
            .await
            .expect("append");
    }
    stored
}
