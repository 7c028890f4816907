use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use crate::envelope::{
    IdempotencyRecord, Metadata, NewEvent, RecordedEvent, ReplayEvent, Snapshot, StreamId,
};
use crate::error::StoreError;
use crate::projection::ParkedEvent;

pub use immediate::ImmediateStore;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod durable;
mod immediate;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
// The listeners are the durable stores'.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) mod signal;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// What only this crate can name: the argument of [`EventStore::watch_log`],
/// which keeps that method this crate's (as `std`'s `Error::type_id` does).
pub(crate) mod internal {
    /// Only this crate makes one.
    #[derive(Debug)]
    pub struct Internal(pub(crate) ());
}

/// Where a successful append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append (the version of its last new event).
    pub version: u64,
    /// Global position of the last appended event.
    pub position: u64,
}

/// How many pages of `limit` events a [`EventStore::read_all_of`] looks through at
/// most, when its store cannot filter in a query.
pub(crate) const SCAN_PAGES: usize = 16;

/// A page of the global log filtered by event name: see
/// [`EventStore::read_all_of`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LogPage {
    /// The events found, in position order.
    pub events: Vec<RecordedEvent>,
    /// How far the log was read: the `after_position` of the next call.
    pub read_to: u64,
}

impl LogPage {
    /// A page of `events`, the log read up to `read_to` (for store authors).
    pub fn new(events: Vec<RecordedEvent>, read_to: u64) -> Self {
        LogPage { events, read_to }
    }

    /// The page a query with `limit` found after `after_position`, having
    /// examined the log up to `end`: a full page was read up to its last event,
    /// a shorter one up to `end` (for store authors).
    pub fn scanned(
        events: Vec<RecordedEvent>,
        limit: usize,
        after_position: u64,
        end: u64,
    ) -> Self {
        let read_to = match events.last() {
            Some(last) if events.len() >= limit => last.position,
            _ => end.max(after_position),
        };
        LogPage { events, read_to }
    }
}

/// How many events of the global log after a position have one of some names:
/// see [`EventStore::count_all_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogCount {
    /// The events counted.
    pub events: u64,
    /// How far the log was counted: the `after_position` of the next count,
    /// which counts only the events after it.
    pub read_to: u64,
}

impl LogCount {
    /// `events` counted, the log read up to `read_to` (for store authors).
    pub fn new(events: u64, read_to: u64) -> Self {
        LogCount { events, read_to }
    }
}

/// Durable (or not) home of the events: append with optimistic concurrency, read
/// one stream, tail the global log.
///
/// Every backend passes the same conformance suite: appends are all-or-nothing,
/// versions within a stream are `1..=n` without gaps, and [`EventStore::read_all`]
/// returns the global log in an order that a reader can follow with its last
/// position as the cursor, never finding later an event below that position. (The
/// position in an [`Appended`] is where the events landed, not a cursor: on
/// PostgreSQL, events with lower positions may still be committing.)
///
/// ```
/// use eda::prelude::*;
/// use eda::{Metadata, NewEvent, StreamId};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let stream = StreamId { aggregate_type: "Account", aggregate_id: "acc-1" };
/// let event = NewEvent {
///     event_id: eda::new_event_id(),
///     name: "AccountOpened".into(),
///     version: 1,
///     payload: r#"{"owner":"ada"}"#.into(),
/// };
/// let appended = store.append(stream, 0, vec![event], &Metadata::default()).await?;
/// assert_eq!(appended.version, 1);
/// assert_eq!(store.read_stream(stream, 0).await?.len(), 1);
/// # Ok::<(), eda::StoreError>(())
/// # }).unwrap();
/// ```
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its current version equals `expected_version`
    /// (0 for a stream with no events). All events are stored, or none: a different
    /// version gives [`StoreError::Conflict`], an already stored event id gives
    /// [`StoreError::DuplicateEvent`]. An empty batch stores no event.
    ///
    /// When `metadata` carries an idempotency key, the store keeps its
    /// [`IdempotencyRecord`] ([`IdempotencyRecord::of_append`]) in the same
    /// transaction, also for an empty batch (still only at the expected version),
    /// and refuses a key it already holds with [`StoreError::DuplicateKey`],
    /// storing nothing (or with [`StoreError::DuplicateEvent`] when the events'
    /// ids, derived from the key by `App`, are found first).
    fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Events of one stream with a version greater than `after_version`, in order.
    fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Up to `limit` events of the global log with a position greater than
    /// `after_position`, in position order. Pass the position of the last event
    /// read as the next `after_position`: no event will appear behind it later.
    fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Up to `limit` events of the global log after `after_position` whose name is
    /// one of `names`, in position order, and how far the log was read: what a
    /// reader that handles only those events (a projection, a policy) needs, without
    /// decoding or even receiving the others.
    ///
    /// [`LogPage::read_to`] is the position to continue from: every event between
    /// `after_position` and it that has one of the names is in the page, and, as
    /// with [`read_all`](Self::read_all), no event will later appear at or below it.
    /// A page with fewer than `limit` events may end before the log does (a
    /// store that looks through a bounded window per call, as the default
    /// does); a reader has read everything there was to read (on PostgreSQL, up
    /// to the oldest transaction still running) when a call moves `read_to` no
    /// further.
    ///
    /// The default filters [`read_all`](Self::read_all)'s pages, reading at most 16
    /// of them (of `limit` events each) per call; the three stores filter in their
    /// query instead (`MemoryStore` looks at as many events at most).
    fn read_all_of(
        &self,
        after_position: u64,
        limit: usize,
        names: &[&str],
    ) -> impl Future<Output = Result<LogPage, StoreError>> + Send {
        async move {
            let limit = limit.max(1);
            let mut page = LogPage {
                events: Vec::new(),
                read_to: after_position,
            };
            for _ in 0..SCAN_PAGES {
                let read = self.read_all(page.read_to, limit).await?;
                let full = read.len() == limit;
                for event in read {
                    page.read_to = event.position;
                    if names.contains(&event.name.as_str()) {
                        page.events.push(event);
                        if page.events.len() == limit {
                            return Ok(page);
                        }
                    }
                }
                if !full {
                    break;
                }
            }
            Ok(page)
        }
    }

    /// How many events of the global log after `after_position` have one of
    /// `names`, and how far the log was counted: what a runner that handles
    /// those events reports its progress against while it catches up (or
    /// rebuilds a read model). `None`: the store cannot count; its runners report
    /// progress without a total.
    ///
    /// [`LogCount::read_to`] is as [`read_all_of`](Self::read_all_of)'s: no event
    /// will later appear at or below it, so counting on from it counts each
    /// event once. Positions are not counts (PostgreSQL's have gaps), hence a
    /// count. It costs one pass over the events after `after_position` (an index
    /// range, without their payloads), less than reading them.
    ///
    /// The default is `None`; the three stores count.
    fn count_all_of(
        &self,
        after_position: u64,
        names: &[&str],
    ) -> impl Future<Output = Result<Option<LogCount>, StoreError>> + Send {
        let _ = (after_position, names);
        std::future::ready(Ok(None))
    }

    /// The event with this id, if it is stored.
    fn read_event(
        &self,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;

    /// What an append with idempotency key `key` stored, if one did.
    fn read_idempotency_key(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<IdempotencyRecord>, StoreError>> + Send;

    /// The checkpoint stored under `name` by
    /// [`write_checkpoint`](Self::write_checkpoint), `None` if there is none.
    ///
    /// A checkpoint is a position in the global log that a runner (of a policy, a
    /// projection kept outside the store, the outbox) has handled everything up
    /// to, kept in the store itself. A name that not every store can keep is
    /// refused with [`StoreError::Invalid`], as by `write_checkpoint`.
    fn read_checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Moves `name`'s checkpoint from `from` (`None`: none is stored yet) to `to`,
    /// atomically: if the stored checkpoint is not `from`, nothing changes and the
    /// result is [`StoreError::CheckpointMoved`], with the checkpoint found.
    ///
    /// Several processes may run the same runner: each reads the checkpoint,
    /// handles the events after it, and moves it from where it read it. Of two
    /// runners that read the same checkpoint, one moves it and the other gets
    /// `CheckpointMoved`: it lost its turn, and reads the checkpoint again. `to`
    /// may be any position, lower than `from` too (a runner started over). A name
    /// is 1 to [`MAX_NAME_BYTES`] bytes without the character NUL; others are
    /// refused with [`StoreError::Invalid`] (`what: "checkpoint name"`).
    ///
    /// ```
    /// use eda::prelude::*;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// assert_eq!(store.read_checkpoint("mailer").await?, None);
    /// store.write_checkpoint("mailer", None, 10).await?;
    /// store.write_checkpoint("mailer", Some(10), 25).await?;
    ///
    /// // Another runner of "mailer" that read the checkpoint at 10 loses its turn.
    /// let lost = store.write_checkpoint("mailer", Some(10), 18).await.unwrap_err();
    /// assert!(matches!(
    ///     lost,
    ///     StoreError::CheckpointMoved { expected: Some(10), found: Some(25), .. }
    /// ));
    /// assert_eq!(store.read_checkpoint("mailer").await?, Some(25));
    /// # Ok::<(), eda::StoreError>(())
    /// # }).unwrap();
    /// ```
    fn write_checkpoint(
        &self,
        name: &str,
        from: Option<u64>,
        to: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Parks `event` for the runner `name` (a dead letter), or replaces the error of
    /// the one parked at its position.
    ///
    /// A runner whose state is not a database of its own (a policy, the outbox
    /// relay) keeps the events it could not handle here, under the name it keeps
    /// its checkpoint under, so that they outlive its process and wait to be
    /// retried or skipped. A runner has at most one event parked per position:
    /// parking one again keeps what was parked, with the new error (a retry that
    /// failed). The time is kept to the microsecond; parked events are not events
    /// of the log, and [`read_all`](Self::read_all) never returns them.
    ///
    /// The name is checked as [`write_checkpoint`](Self::write_checkpoint) checks
    /// it (`what: "checkpoint name"`); the event's aggregate type and id and its
    /// name as an append checks them, and its error may not contain the character
    /// NUL (`what: "parked error"`): others are refused with
    /// [`StoreError::Invalid`] by every store, and nothing is parked.
    ///
    /// ```
    /// use eda::prelude::*;
    /// use eda::{Metadata, ParkedEvent};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let stream = eda::StreamId { aggregate_type: "Customer", aggregate_id: "c-1" };
    /// let event = eda::NewEvent {
    ///     event_id: eda::new_event_id(),
    ///     name: "CustomerRegistered".into(),
    ///     version: 1,
    ///     payload: r#"{"email":"ada@example.com"}"#.into(),
    /// };
    /// store.append(stream, 0, vec![event], &Metadata::default()).await?;
    /// let log = store.read_all(0, 1).await?;
    /// let registered = &log[0];
    ///
    /// // The mailer could not send its welcome mail: it parks the event and goes on.
    /// store.park("mailer", &ParkedEvent::from_event(registered, "smtp: timed out")).await?;
    /// // A retry that fails again replaces the error.
    /// store.park("mailer", &ParkedEvent::from_event(registered, "smtp: refused")).await?;
    /// let parked = store.parked("mailer").await?;
    /// assert_eq!(parked.len(), 1);
    /// assert_eq!(parked[0].error, "smtp: refused");
    ///
    /// // The next retry succeeds: the event is no longer parked.
    /// assert!(store.unpark("mailer", registered.position).await?);
    /// assert!(store.parked("mailer").await?.is_empty());
    /// # Ok::<(), eda::StoreError>(())
    /// # }).unwrap();
    /// ```
    fn park(
        &self,
        name: &str,
        event: &ParkedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The events parked for `name` by [`park`](Self::park), in position order.
    /// A name that not every store can keep is refused with
    /// [`StoreError::Invalid`], as by `park`.
    fn parked(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<ParkedEvent>, StoreError>> + Send;

    /// Removes the event parked for `name` at `position` (retried or skipped);
    /// whether one was parked there. A name that not every store can keep is
    /// refused with [`StoreError::Invalid`], as by [`park`](Self::park).
    fn unpark(
        &self,
        name: &str,
        position: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Keeps `snapshot` as the stream's latest snapshot (replacing an older one).
    /// Stores that keep no snapshots accept and drop it: the default.
    fn save_snapshot(
        &self,
        stream: StreamId<'_>,
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (stream, snapshot);
        std::future::ready(Ok(()))
    }

    /// The events of `stream` after `after_version`, in version order, as replay
    /// reads them: at most `limit` of them, and fewer only when the stream has no
    /// more. Replay asks for the next page while pages come back exactly full, so
    /// a store that keeps to the limit never has a long stream in memory whole.
    ///
    /// The default returns every event after `after_version`, from
    /// [`read_stream`](Self::read_stream), ignoring `limit` (a page longer than
    /// asked also ends replay's reading). A store should override it to stop at
    /// the limit and to read less per event: no metadata, no stream name per row.
    fn read_for_replay(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ReplayEvent>, StoreError>> + Send {
        let _ = limit;
        async move {
            let events = self.read_stream(stream, after_version).await?;
            Ok(events.into_iter().map(ReplayEvent::from).collect())
        }
    }

    /// The stream's latest snapshot and its events from the snapshot's version on
    /// (the event the snapshot ends with included, so the caller can tell a
    /// snapshot that is ahead of the stream; from the first event when there is
    /// no snapshot), as replay reads them, paged like
    /// [`read_for_replay`](Self::read_for_replay): at most `limit` events (the
    /// snapshot does not count), fewer only at the stream's end.
    /// The default reads one, then the other; a store may answer both in one round
    /// trip. A snapshot newer than the first event of the tail can come back (it
    /// was saved in between): callers skip the events it includes.
    fn read_from_snapshot(
        &self,
        stream: StreamId<'_>,
        limit: usize,
    ) -> impl Future<Output = Result<(Option<Snapshot>, Vec<ReplayEvent>), StoreError>> + Send {
        async move {
            let snapshot = self.load_snapshot(stream).await?;
            // From the snapshot's own event on, so a snapshot ahead of the stream shows.
            let after = snapshot.as_ref().map_or(0, |s| s.version.saturating_sub(1));
            let events = self.read_for_replay(stream, after, limit).await?;
            Ok((snapshot, events))
        }
    }

    /// Closes the store: later calls get [`StoreError::Closed`]. SQLite first
    /// writes the appends already sent and moves everything into its database
    /// file; PostgreSQL closes its pools, and statements in flight finish on their
    /// connections. Default: nothing to do.
    fn close(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Ok(()))
    }

    /// The operations this store completes without waiting, if it has them: see
    /// [`ImmediateStore`]. Default: `None`, and [`App`](crate::App) awaits
    /// [`append`](Self::append) and the reads.
    ///
    /// A store that wraps another forwards this to the inner store only when it
    /// adds nothing to appends, replays and snapshots (as `tracing`'s layers forward
    /// `downcast_raw`): `App` calls the immediate operations instead of the
    /// wrapper's async ones. A wrapper that counts, delays or checks appends leaves
    /// the default.
    fn as_immediate(&self) -> Option<&dyn ImmediateStore> {
        None
    }

    /// The positions of commits the runners of an `App` on this store would
    /// not hear of from that `App` (another `App` on the store, another store
    /// on the same database, another process), each a position the log holds
    /// committed; `None` (the default) for a store that cannot tell, whose
    /// runners look for such commits often instead. The stores of this crate
    /// only: no other can name the argument.
    #[doc(hidden)]
    fn watch_log(&self, _: internal::Internal) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The stream's latest snapshot, if the store keeps one. Default: none.
    fn load_snapshot(
        &self,
        stream: StreamId<'_>,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        let _ = stream;
        std::future::ready(Ok(None))
    }
}

/// The longest aggregate id, in bytes, that every store keeps (PostgreSQL's index
/// entries must fit in a third of a page).
pub const MAX_AGGREGATE_ID_BYTES: usize = 1024;
/// The longest aggregate type or event name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;

/// Checks the names an append stores against the limits every store keeps
/// (PostgreSQL's, the strictest): no `NUL` character (`text` cannot hold it), and
/// lengths within [`MAX_AGGREGATE_ID_BYTES`], [`MAX_NAME_BYTES`] and
/// [`MAX_IDEMPOTENCY_KEY_BYTES`]. Every store of eda calls it before storing
/// anything, so a name is refused the same way everywhere; other stores should too.
pub fn check_names(
    stream: StreamId<'_>,
    events: &[NewEvent],
    metadata: &Metadata,
) -> Result<(), StoreError> {
    check_stream(stream)?;
    for event in events {
        check_name("event name", &event.name, MAX_NAME_BYTES, false)?;
    }
    if let Some(key) = &metadata.idempotency_key {
        check_name("idempotency key", key, MAX_IDEMPOTENCY_KEY_BYTES, true)?;
    }
    Ok(())
}

/// [`check_names`] for a stream alone.
pub fn check_stream(stream: StreamId<'_>) -> Result<(), StoreError> {
    check_name(
        "aggregate type",
        stream.aggregate_type,
        MAX_NAME_BYTES,
        false,
    )?;
    check_name(
        "aggregate id",
        stream.aggregate_id,
        MAX_AGGREGATE_ID_BYTES,
        true,
    )
}

/// [`check_names`] for an idempotency key alone.
pub fn check_idempotency_key(key: &str) -> Result<(), StoreError> {
    check_name("idempotency key", key, MAX_IDEMPOTENCY_KEY_BYTES, true)
}

/// Checks a checkpoint's name as [`check_names`] checks an event name: 1 to
/// [`MAX_NAME_BYTES`] bytes, no `NUL` character.
pub fn check_checkpoint_name(name: &str) -> Result<(), StoreError> {
    check_name("checkpoint name", name, MAX_NAME_BYTES, false)
}

/// What [`EventStore::park`] checks before parking: the runner's name as a
/// checkpoint's, the event's stream and name as an append's, and an error without
/// the character NUL.
pub(crate) fn check_parked(name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
    check_checkpoint_name(name)?;
    check_stream(StreamId {
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
    })?;
    check_name("event name", &event.name, MAX_NAME_BYTES, false)?;
    check_name("parked error", &event.error, usize::MAX, true)
}

fn check_name(
    what: &'static str,
    value: &str,
    max_bytes: usize,
    may_be_empty: bool,
) -> Result<(), StoreError> {
    let invalid = |reason: String| Err(StoreError::Invalid { what, reason });
    if value.is_empty() && !may_be_empty {
        return invalid("it is empty".into());
    }
    if value.len() > max_bytes {
        return invalid(format!(
            "it is {} bytes long, more than the {max_bytes} every store keeps",
            value.len()
        ));
    }
    if value.as_bytes().contains(&0) {
        return invalid(
            "it contains the character NUL (`\\0`), which PostgreSQL cannot store".into(),
        );
    }
    Ok(())
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe mirror of [`EventStore`], so `App` can hold any store without a
/// type parameter.
pub(crate) trait DynEventStore: Send + Sync + 'static {
    fn append<'a>(
        &'a self,
        stream: StreamId<'a>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<Appended, StoreError>>;

    fn read_for_replay<'a>(
        &'a self,
        stream: StreamId<'a>,
        after_version: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReplayEvent>, StoreError>>;

    fn read_idempotency_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>>;

    fn save_snapshot<'a>(
        &'a self,
        stream: StreamId<'a>,
        snapshot: &'a Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    #[allow(clippy::type_complexity)]
    fn read_from_snapshot<'a>(
        &'a self,
        stream: StreamId<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<(Option<Snapshot>, Vec<ReplayEvent>), StoreError>>;

    fn read_all_of<'a>(
        &'a self,
        after_position: u64,
        limit: usize,
        names: &'a [&'a str],
    ) -> BoxFuture<'a, Result<LogPage, StoreError>>;

    fn count_all_of<'a>(
        &'a self,
        after_position: u64,
        names: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Option<LogCount>, StoreError>>;

    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    fn read_event(
        &self,
        event_id: Uuid,
    ) -> BoxFuture<'_, Result<Option<RecordedEvent>, StoreError>>;

    fn read_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    fn write_checkpoint<'a>(
        &'a self,
        name: &'a str,
        from: Option<u64>,
        to: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    fn park<'a>(
        &'a self,
        name: &'a str,
        event: &'a ParkedEvent,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    fn parked<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>, StoreError>>;

    fn unpark<'a>(
        &'a self,
        name: &'a str,
        position: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    fn as_immediate(&self) -> Option<&dyn ImmediateStore>;

    fn watch_log(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
}

impl<S: EventStore> DynEventStore for S {
    fn append<'a>(
        &'a self,
        stream: StreamId<'a>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &'a Metadata,
    ) -> BoxFuture<'a, Result<Appended, StoreError>> {
        Box::pin(EventStore::append(
            self,
            stream,
            expected_version,
            events,
            metadata,
        ))
    }

    fn read_for_replay<'a>(
        &'a self,
        stream: StreamId<'a>,
        after_version: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReplayEvent>, StoreError>> {
        Box::pin(EventStore::read_for_replay(
            self,
            stream,
            after_version,
            limit,
        ))
    }

    fn read_idempotency_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        Box::pin(EventStore::read_idempotency_key(self, key))
    }

    fn save_snapshot<'a>(
        &'a self,
        stream: StreamId<'a>,
        snapshot: &'a Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(EventStore::save_snapshot(self, stream, snapshot))
    }

    fn read_from_snapshot<'a>(
        &'a self,
        stream: StreamId<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<(Option<Snapshot>, Vec<ReplayEvent>), StoreError>> {
        Box::pin(EventStore::read_from_snapshot(self, stream, limit))
    }

    fn read_all_of<'a>(
        &'a self,
        after_position: u64,
        limit: usize,
        names: &'a [&'a str],
    ) -> BoxFuture<'a, Result<LogPage, StoreError>> {
        Box::pin(EventStore::read_all_of(self, after_position, limit, names))
    }

    fn count_all_of<'a>(
        &'a self,
        after_position: u64,
        names: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Option<LogCount>, StoreError>> {
        Box::pin(EventStore::count_all_of(self, after_position, names))
    }

    fn read_event(
        &self,
        event_id: Uuid,
    ) -> BoxFuture<'_, Result<Option<RecordedEvent>, StoreError>> {
        Box::pin(EventStore::read_event(self, event_id))
    }

    fn read_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(EventStore::read_checkpoint(self, name))
    }

    fn write_checkpoint<'a>(
        &'a self,
        name: &'a str,
        from: Option<u64>,
        to: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(EventStore::write_checkpoint(self, name, from, to))
    }

    fn park<'a>(
        &'a self,
        name: &'a str,
        event: &'a ParkedEvent,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(EventStore::park(self, name, event))
    }

    fn parked<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>, StoreError>> {
        Box::pin(EventStore::parked(self, name))
    }

    fn unpark<'a>(
        &'a self,
        name: &'a str,
        position: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(EventStore::unpark(self, name, position))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(EventStore::close(self))
    }

    fn as_immediate(&self) -> Option<&dyn ImmediateStore> {
        EventStore::as_immediate(self)
    }

    fn watch_log(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        EventStore::watch_log(self, internal::Internal(()))
    }
}
