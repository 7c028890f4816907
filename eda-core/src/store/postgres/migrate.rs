//! The schema's versions: a new schema gets the current one, an older one is
//! migrated, a newer one is refused.

use super::{sql, PostgresStore};
use crate::error::StoreError;
use crate::store::durable::backend;

/// The schema version this code creates and reads.
const SCHEMA_VERSION: i32 = 6;

impl PostgresStore {
    /// Creates or upgrades the schema in one transaction; refuses a newer schema.
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Concurrent openers migrate one at a time.
        tx.execute(sql::MIGRATE_LOCK, &[]).await.map_err(backend)?;
        tx.batch_execute(&sql::create_schema(&self.schema))
            .await
            .map_err(backend)?;
        let found: Option<i32> = tx
            .query_one(sql::SCHEMA_VERSION_FOUND, &[])
            .await
            .map_err(backend)?
            .get(0);
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::IncompatibleSchema {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION.unsigned_abs(),
            });
        }
        if found < 1 {
            tx.batch_execute(sql::MIGRATE_TO_1).await.map_err(backend)?;
        }
        if found < 2 {
            tx.batch_execute(sql::MIGRATE_TO_2).await.map_err(backend)?;
        }
        if found < 3 {
            tx.batch_execute(sql::MIGRATE_TO_3).await.map_err(backend)?;
        }
        if found < 4 {
            tx.batch_execute(sql::MIGRATE_TO_4).await.map_err(backend)?;
        }
        if found < 5 {
            tx.batch_execute(sql::MIGRATE_TO_5).await.map_err(backend)?;
        }
        if found < 6 {
            tx.batch_execute(sql::MIGRATE_TO_6).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}
