//! A checkpoint kept in the event store (`EventStore::write_checkpoint`), as
//! policies and the relay keep theirs: moved by compare-and-set from the value
//! this runner read or wrote last.

use super::{Failure, Started};
use crate::error::StoreError;
use crate::store::DynEventStore;

/// A runner's checkpoint in the event store, under `name`.
pub(crate) struct StoredCheckpoint {
    name: &'static str,
    /// The checkpoint as stored, for the next compare-and-set.
    stored: Option<u64>,
}

impl StoredCheckpoint {
    pub(crate) fn new(name: &'static str) -> Self {
        StoredCheckpoint { name, stored: None }
    }

    /// Reads the checkpoint the runner before left: where this one starts.
    pub(crate) async fn read(&mut self, store: &dyn DynEventStore) -> Result<Started, Failure> {
        let stored = store.read_checkpoint(self.name).await;
        self.stored = stored.map_err(|error| Failure::retry(error, None))?;
        Ok(Started::at(self.stored.unwrap_or(0)))
    }

    /// Moves the checkpoint to `to`; refused (the runner stands by) if another
    /// runner moved it since this one read or wrote it.
    pub(crate) async fn move_to(
        &mut self,
        store: &dyn DynEventStore,
        to: u64,
    ) -> Result<(), Failure> {
        if self.stored == Some(to) {
            return Ok(());
        }
        match store.write_checkpoint(self.name, self.stored, to).await {
            Ok(()) => {
                self.stored = Some(to);
                Ok(())
            }
            // Another runner had its turn meanwhile.
            Err(error @ StoreError::CheckpointMoved { .. }) => Err(Failure::standby(error)),
            Err(error) => Err(Failure::retry(error, None)),
        }
    }
}
