//! The schema's versions: a new database gets the current one, an older one is
//! migrated, a newer one is refused.

use rusqlite::{Connection, TransactionBehavior};

use super::sql;
use crate::error::StoreError;
use crate::store::durable::backend;

/// The schema version this code creates and reads.
const SCHEMA_VERSION: u32 = 5;

/// Creates or upgrades the schema in one transaction; refuses a newer schema.
pub(super) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch(sql::CREATE_SCHEMA_TABLE)
        .map_err(backend)?;
    let found: Option<i64> = tx
        .query_row(sql::SCHEMA_VERSION_FOUND, [], |row| row.get(0))
        .map_err(backend)?;
    let found = found.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX));
    if found > SCHEMA_VERSION {
        return Err(StoreError::IncompatibleSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        tx.execute_batch(sql::MIGRATE_TO_1).map_err(backend)?;
    }
    if found < 2 {
        tx.execute_batch(sql::MIGRATE_TO_2).map_err(backend)?;
    }
    if found < 3 {
        tx.execute_batch(sql::MIGRATE_TO_3).map_err(backend)?;
    }
    if found < 4 {
        tx.execute_batch(sql::MIGRATE_TO_4).map_err(backend)?;
    }
    if found < 5 {
        tx.execute_batch(sql::MIGRATE_TO_5).map_err(backend)?;
    }
    tx.commit().map_err(backend)
}
