//! Rebuilding an aggregate's state from its stream: from the first event or a
//! snapshot, a page at a time, and catching a cached state up with what other
//! writers appended.

use super::App;
use crate::aggregate::{Aggregate, AggregateEvent};
use crate::app::cache::Cached;
use crate::envelope::{EventRef, ReplayEvent, StreamId};
use crate::error::{DecodeError, LoadError, StoreError};

/// How many events replay reads from a durable store at a time: a long stream is
/// decoded page by page, never held in memory whole.
pub(super) const REPLAY_PAGE: usize = 1_000;

impl App {
    /// The current state of the stream `id` of `A`, from its snapshot if it has a
    /// usable one.
    pub(super) async fn replay<A: Aggregate>(&self, id: &str) -> Result<Cached<A>, LoadError> {
        let mut cached = Cached {
            state: A::default(),
            version: 0,
        };
        if A::SNAPSHOT_EVERY > 0 && self.replay_from_snapshot(&mut cached, id).await? {
            return Ok(cached);
        }
        self.catch_up(&mut cached, id).await?;
        Ok(cached)
    }

    /// Applies the events stored after `cached.version`, a page at a time.
    pub(super) async fn catch_up<A: Aggregate>(
        &self,
        cached: &mut Cached<A>,
        id: &str,
    ) -> Result<(), LoadError> {
        let stream = StreamId {
            aggregate_type: A::TYPE,
            aggregate_id: id,
        };
        if let Some(immediate) = self.inner.store.as_immediate() {
            // Decoded where they are kept: no copies of the stored events.
            let after = cached.version;
            let mut apply = |stored: EventRef<'_>| {
                // The same refusal of a gap as the pages below.
                if stored.version != cached.version + 1 {
                    return Err(gap(stream, &stored, cached.version));
                }
                Ok(apply_recorded(cached, &stored)?)
            };
            return immediate.replay_now(stream, after, &mut apply);
        }
        loop {
            let before = cached.version;
            let page = self
                .inner
                .store
                .read_for_replay(stream, before, REPLAY_PAGE)
                .await?;
            if let Some(after_gap) = apply_following(cached, stream, &page)? {
                let after_gap = after_gap.as_event_ref(stream);
                return Err(gap(stream, &after_gap, cached.version));
            }
            // Only a page exactly full may have more after it.
            if page.len() != REPLAY_PAGE {
                return Ok(());
            }
            if cached.version == before {
                // A store that ignores `after_version`: stop rather than loop,
                // and say so rather than return a stale state.
                return Err(LoadError::Store(StoreError::BrokenContract {
                    method: "read_for_replay",
                    what: format!(
                        "a full page without an event after version {before} of {}/{}",
                        stream.aggregate_type, stream.aggregate_id
                    ),
                }));
            }
        }
    }
}

/// The error for `found` following `version` of `stream`: a version is missing,
/// and a state built across the gap would be wrong.
fn gap(stream: StreamId<'_>, found: &EventRef<'_>, version: u64) -> LoadError {
    LoadError::Store(StoreError::Corrupt {
        position: found.position,
        what: format!(
            "version {} of {}/{} follows version {version}",
            found.version, stream.aggregate_type, stream.aggregate_id
        ),
    })
}

/// Decodes one stored event of `A`.
pub(super) fn decode<A: Aggregate>(stored: &EventRef<'_>) -> Result<A::Event, DecodeError> {
    A::Event::decode(stored.name, stored.event_version, stored.payload)
        .map_err(|kind| DecodeError::at(stored, kind))
}

/// Decodes one stored event and folds it into the state.
pub(super) fn apply_recorded<A: Aggregate>(
    cached: &mut Cached<A>,
    stored: &EventRef<'_>,
) -> Result<(), DecodeError> {
    let event = decode::<A>(stored)?;
    cached.state.apply(&event);
    cached.version = stored.version;
    Ok(())
}

/// Applies the events of `page` that follow on from `cached`, skipping those it
/// already holds; stops at a gap and returns the first event after it.
pub(super) fn apply_following<'p, A: Aggregate>(
    cached: &mut Cached<A>,
    stream: StreamId<'_>,
    page: &'p [ReplayEvent],
) -> Result<Option<&'p ReplayEvent>, DecodeError> {
    for event in page {
        if event.version <= cached.version {
            continue;
        }
        if event.version != cached.version + 1 {
            return Ok(Some(event));
        }
        apply_recorded(cached, &event.as_event_ref(stream))?;
    }
    Ok(None)
}
