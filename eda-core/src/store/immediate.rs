//! The extension point for stores whose data is in this process: operations that
//! complete without waiting, which `App` calls instead of the async ones.

use std::time::SystemTime;

use crate::envelope::{EventRef, Metadata, NewEvent, Snapshot, StreamId};
use crate::error::{LoadError, StoreError};
use crate::store::Appended;

/// What a store can do without waiting: no I/O, no suspension point, only a short
/// critical section. [`MemoryStore`](crate::MemoryStore) implements it; a store
/// offers it through [`EventStore::as_immediate`](crate::EventStore::as_immediate).
///
/// When the store behind an [`App`](crate::App) has it, a command that meets the
/// common case (its aggregate cached and its slot free, a synchronous handler
/// without services, no idempotency key, accepted with events) is decided,
/// appended and committed when its `Execute` becomes a future (`.await` does that),
/// without boxing one; replays decode each event where the store keeps it,
/// without copying it. Every other command takes the same path through the same
/// decide and commit steps, with these calls in place of the awaited ones.
///
/// The contract, beyond that of each method's async counterpart on
/// [`EventStore`](crate::EventStore) (which the conformance suite checks on the
/// async methods; an implementation must give the same results through both):
/// - what `append_now` stored is seen at once by every read, async or immediate;
/// - `replay_now` hands over the versions after `after_version` one by one, each
///   the one after the last (`App` refuses a gap with
///   [`StoreError::Corrupt`](crate::StoreError::Corrupt), as it does for pages);
/// - `apply` is `App`'s code, which decodes the event and runs the aggregate's
///   `#[apply]` method: it may take a while on a long stream and may panic, so
///   call it where a long or unwinding call leaves the store sound (`MemoryStore`
///   releases its lock every few hundred events and recovers a poisoned lock).
pub trait ImmediateStore: Send + Sync {
    /// [`EventStore::append`](crate::EventStore::append), recorded at
    /// `recorded_at`. On success `events` is drained (its capacity stays for the
    /// caller's next command); on failure nothing is stored.
    fn append_now(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: &mut Vec<NewEvent>,
        metadata: &Metadata,
        recorded_at: SystemTime,
    ) -> Result<Appended, StoreError>;

    /// Calls `apply` on every event of `stream` after `after_version`, in version
    /// order (what [`EventStore::read_for_replay`](crate::EventStore::read_for_replay)
    /// returns page after page), and stops at its first error. A long stream must
    /// not hold up writers for the whole replay.
    fn replay_now(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        apply: &mut dyn FnMut(EventRef<'_>) -> Result<(), LoadError>,
    ) -> Result<(), LoadError>;

    /// [`EventStore::save_snapshot`](crate::EventStore::save_snapshot): keeps
    /// `snapshot` unless the stream has a newer one.
    fn save_snapshot_now(&self, stream: StreamId<'_>, snapshot: Snapshot)
        -> Result<(), StoreError>;
}
