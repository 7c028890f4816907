//! The ledger in a SQLite database.

use std::path::Path;

use eda::prelude::*;
use eda::rusqlite::{self, Connection, Transaction};
use eda::RecordedEvent;

use super::LedgerRows;
use crate::bank::{AccountOpened, MoneyDeposited, MoneyWithdrawn};

/// A ledger projection named `ledger`: `$ty`, at `$version`.
macro_rules! ledger {
    ($(#[$doc:meta])* $ty:ident, $version:literal) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $ty;

        #[projection(name = "ledger", version = $version)]
        impl $ty {
            #[reset]
            fn reset(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
                empty(tx)
            }

            #[on]
            fn opened(
                &mut self,
                _: &AccountOpened,
                recorded: &RecordedEvent,
                tx: &Transaction<'_>,
            ) -> rusqlite::Result<()> {
                add(tx, recorded, 0)
            }

            #[on]
            fn deposited(
                &mut self,
                e: &MoneyDeposited,
                recorded: &RecordedEvent,
                tx: &Transaction<'_>,
            ) -> rusqlite::Result<()> {
                add(tx, recorded, e.amount as i64)
            }

            #[on]
            fn withdrawn(
                &mut self,
                e: &MoneyWithdrawn,
                recorded: &RecordedEvent,
                tx: &Transaction<'_>,
            ) -> rusqlite::Result<()> {
                add(tx, recorded, -(e.amount as i64))
            }
        }
    };
}

ledger!(
    /// The bank's balances in a SQLite database: `balances (account, balance)`
    /// and `applications (event_id, position)`; its `#[reset]` method empties
    /// both.
    Ledger,
    1
);

ledger!(
    /// The same ledger at version 2: what a new version of [`Ledger`] rebuilds.
    LedgerV2,
    2
);

/// Empties the ledger's tables.
pub fn empty(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("DELETE FROM balances; DELETE FROM applications;")
}

/// The rows one event writes: `amount` added to its account's balance, and its
/// application. Public for the read-side bench's raw loop, which writes the same rows.
pub fn add(tx: &Transaction<'_>, recorded: &RecordedEvent, amount: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO balances (account, balance) VALUES (?1, ?2)
         ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance",
    )?
    .execute((&recorded.aggregate_id, amount))?;
    tx.prepare_cached("INSERT INTO applications (event_id, position) VALUES (?1, ?2)")?
        .execute((recorded.event_id.to_string(), recorded.position as i64))?;
    Ok(())
}

/// Creates the ledger's tables in the database at `path` (if they are missing).
pub fn create(path: &Path) -> rusqlite::Result<()> {
    Connection::open(path)?.execute_batch(
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS applications (event_id TEXT NOT NULL, position INTEGER NOT NULL);",
    )
}

/// Reads a ledger database.
pub fn read(path: &Path) -> rusqlite::Result<LedgerRows> {
    let connection = Connection::open(path)?;
    let mut rows = LedgerRows::default();
    let mut balances = connection.prepare("SELECT account, balance FROM balances")?;
    for row in balances.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))? {
        let (account, balance) = row?;
        rows.balances.insert(account, balance);
    }
    let mut applications =
        connection.prepare("SELECT event_id, count(*) FROM applications GROUP BY event_id")?;
    for row in applications.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))? {
        let (event, count) = row?;
        rows.applications.insert(event, count);
    }
    Ok(rows)
}
