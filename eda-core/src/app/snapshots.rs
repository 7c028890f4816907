//! Snapshots: when one is due, what makes one usable (its version, the shape of
//! the state it was taken of), and replay from one.

use super::replay::{apply_following, REPLAY_PAGE};
use super::App;
use crate::aggregate::Aggregate;
use crate::app::cache::Cached;
use crate::envelope::{Snapshot, StreamId};
use crate::error::{LoadError, StoreError};

impl App {
    /// Loads the stream's snapshot and the events after it. Returns whether that
    /// gave the current state; if not (no usable snapshot, a tail that does not
    /// follow on from it, a store error), `cached` holds a consistent prefix and
    /// the caller reads the rest.
    pub(super) async fn replay_from_snapshot<A: Aggregate>(
        &self,
        cached: &mut Cached<A>,
        id: &str,
    ) -> Result<bool, LoadError> {
        let stream = StreamId {
            aggregate_type: A::TYPE,
            aggregate_id: id,
        };
        let read = self.inner.store.read_from_snapshot(stream, REPLAY_PAGE);
        let (snapshot, tail) = match read.await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id = id, %error, "snapshot not loaded; replaying");
                return Ok(false);
            }
        };
        match snapshot.as_ref().map(|s| restore::<A>(s, id)) {
            // The stream must hold the event the snapshot ends with: a snapshot
            // ahead of its stream (a restored backup, events removed by hand)
            // would make every append conflict forever.
            Some(Some(state)) if tail.first().map(|e| e.version) == Some(state.version) => {
                *cached = state
            }
            Some(Some(state)) => {
                tracing::warn!(
                    aggregate_type = A::TYPE,
                    aggregate_id = id,
                    snapshot_version = state.version,
                    "the snapshot is ahead of its stream; replaying"
                );
                return Ok(false);
            }
            Some(None) => return Ok(false),
            None => {}
        }
        // The snapshot and the tail may come from two reads with a snapshot saved in
        // between: events the state holds are skipped, and a gap is not trusted.
        if apply_following(cached, stream, &tail)?.is_some() {
            return Ok(false);
        }
        // A page exactly full: the caller reads on from here.
        Ok(tail.len() != REPLAY_PAGE)
    }

    /// Stores a snapshot. A failure is logged, not returned: the events are
    /// committed, and a missing snapshot only costs replay time.
    pub(super) async fn save_snapshot(&self, stream: StreamId<'_>, snapshot: Snapshot) {
        let saved = match self.inner.store.as_immediate() {
            Some(immediate) => immediate.save_snapshot_now(stream, snapshot),
            None => self.inner.store.save_snapshot(stream, &snapshot).await,
        };
        warn_if_unsaved(stream, saved);
    }
}

/// Logs a snapshot that was not saved: the events are committed, and a missing
/// snapshot only costs replay time.
pub(super) fn warn_if_unsaved(stream: StreamId<'_>, saved: Result<(), StoreError>) {
    if let Err(error) = saved {
        let StreamId {
            aggregate_type,
            aggregate_id,
        } = stream;
        tracing::warn!(aggregate_type, aggregate_id, %error, "snapshot not saved");
    }
}

/// The state of a snapshot, if it is usable: taken with this `snapshot_version` and
/// readable. Otherwise the aggregate is replayed from its events.
fn restore<A: Aggregate>(snapshot: &Snapshot, id: &str) -> Option<Cached<A>> {
    let changed = snapshot.snapshot_version != A::SNAPSHOT_VERSION
        || snapshot.fingerprint != state_fingerprint::<A>();
    if snapshot.version == 0 || changed {
        tracing::debug!(
            aggregate_type = A::TYPE,
            aggregate_id = id,
            "snapshot of another version; replaying"
        );
        return None;
    }
    match A::decode_snapshot(&snapshot.payload)? {
        Ok(state) => Some(Cached {
            state,
            version: snapshot.version,
        }),
        Err(error) => {
            tracing::warn!(aggregate_type = A::TYPE, aggregate_id = id, %error, "snapshot not readable; replaying");
            None
        }
    }
}

/// The shape of `A`'s state: field names and JSON kinds of the default state,
/// nested, hashed with FNV-1a (stable across builds, unlike the std hasher). Two
/// states with other fields, or fields of another kind, have other fingerprints.
/// Worked out once per type: every snapshot load and save compares or stores it.
fn state_fingerprint<A: Aggregate>() -> u64 {
    static FINGERPRINTS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<std::any::TypeId, u64>>,
    > = std::sync::OnceLock::new();
    let known = FINGERPRINTS.get_or_init(Default::default);
    let lock = || {
        known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let id = std::any::TypeId::of::<A>();
    if let Some(&fingerprint) = lock().get(&id) {
        return fingerprint;
    }
    let fingerprint = shape_fingerprint::<A>();
    lock().insert(id, fingerprint);
    fingerprint
}

fn shape_fingerprint<A: Aggregate>() -> u64 {
    fn shape(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(fields) => {
                out.push('{');
                for (name, field) in fields {
                    out.push_str(name);
                    out.push(':');
                    shape(field, out);
                    out.push(',');
                }
                out.push('}');
            }
            serde_json::Value::Array(_) => out.push('['),
            serde_json::Value::String(_) => out.push('s'),
            serde_json::Value::Number(_) => out.push('n'),
            serde_json::Value::Bool(_) => out.push('b'),
            serde_json::Value::Null => out.push('0'),
        }
    }
    let default = A::default().encode_snapshot().and_then(Result::ok);
    let mut text = String::new();
    if let Some(value) = default.and_then(|json| serde_json::from_str(&json).ok()) {
        shape(&value, &mut text);
    }
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A snapshot of `cached`, if the append from version `before` crossed a multiple
/// of the aggregate's `snapshot_every`.
pub(super) fn due_snapshot<A: Aggregate>(cached: &Cached<A>, before: u64) -> Option<Snapshot> {
    let every = A::SNAPSHOT_EVERY;
    if every == 0 || before / every == cached.version / every {
        return None;
    }
    match cached.state.encode_snapshot()? {
        Ok(payload) => Some(Snapshot {
            version: cached.version,
            snapshot_version: A::SNAPSHOT_VERSION,
            fingerprint: state_fingerprint::<A>(),
            payload,
        }),
        Err(error) => {
            tracing::warn!(aggregate_type = A::TYPE, %error, "snapshot not serializable");
            None
        }
    }
}
