//! What the read models kept in a database share (SQLite, PostgreSQL): each
//! page of events is applied in one transaction that also moves the
//! projection's checkpoint by compare-and-set, so that a crash before the commit
//! loses the page's writes and its checkpoint together, and after it keeps
//! both; failed events are parked (dead letters) with their aggregate's later
//! events, and parked events are retried or skipped from the handle.
//!
//! A read model built by an older version of its projection is emptied by the
//! projection's `#[reset]` method, with its parked events and its checkpoint,
//! in one transaction, and rebuilt from the log; so is one whose handle is
//! asked to `rebuild()`.
//!
//! The algorithm is written once, async, against [`Database`]: the PostgreSQL
//! kind awaits its driver, the SQLite kind's futures are ready at once (its
//! driver blocks; it runs them on a blocking thread with `pollster`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::runner::{Failure, Rebuild, Started, Then};
use super::{ApplyError, ParkedEvent, Retried};
use crate::app::App;
use crate::envelope::RecordedEvent;
use crate::error::{DecodeError, StoreError};
use crate::failpoint;
use crate::store::LogPage;

/// How often a page without events moves the stored checkpoint at most.
/// PostgreSQL's read position moves with every transaction on the server, so a
/// runner following an idle log would otherwise commit at every poll (and each
/// of its commits would move the position again). After a restart the runner
/// reads again at most this long a stretch of the log, in which it has nothing
/// to apply.
const IDLE_MOVES: Duration = Duration::from_secs(1);

/// An aggregate: its type and id.
pub(super) type Stream = (String, String);

/// A read model's database, as the page algorithm uses it: transactions in
/// which `P` applies events, and the `eda_projections` and `eda_parked` tables.
pub(super) trait Database<P> {
    /// What the runner does when the checkpoint moved under it (another
    /// runner took its turn): SQLite has no lock to wait for, so it stops; a
    /// PostgreSQL runner stands by and reads the checkpoint again once it has
    /// the lock.
    const LOST_TURN: Then;

    /// Whether `P` has a `#[reset]` method.
    const RESETS: bool;

    /// An open transaction, rolled back when dropped uncommitted.
    type Tx<'c>
    where
        Self: 'c;

    async fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError>;

    async fn commit(tx: Self::Tx<'_>) -> Result<(), StoreError>;

    /// Runs `projection`'s `#[on]` method for `event`, the page's event at
    /// `index`, in `tx`. Its failure, or that of a statement an earlier event's
    /// method queued (see [`flush`](Self::flush)), with the index of the event
    /// that failed.
    async fn apply(
        tx: &Self::Tx<'_>,
        projection: &mut P,
        event: &RecordedEvent,
        index: usize,
    ) -> Result<(), (usize, ApplyError)>;

    /// Sends the statements that the `#[on]` methods queued in `tx` and waits
    /// for them: the first that failed, with the index of the event that
    /// queued it. (PostgreSQL's `PostgresBatch`; SQLite queues nothing.)
    async fn flush(tx: &Self::Tx<'_>) -> Result<(), (usize, ApplyError)> {
        let _ = tx;
        Ok(())
    }

    /// `name`'s stored version and checkpoint, read in `tx` and kept from
    /// other writers until it ends.
    async fn stored(tx: &Self::Tx<'_>, name: &str) -> Result<(i64, i64), StoreError>;

    /// Runs `projection`'s `#[reset]` method in `tx`.
    async fn reset(
        tx: &Self::Tx<'_>,
        projection: &mut P,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// In `tx`, removes `name`'s parked events, and sets its version to
    /// `version` and its checkpoint to 0.
    async fn restart(tx: &Self::Tx<'_>, name: &str, version: u32) -> Result<(), StoreError>;

    /// Records `event` as parked by projection `name`, with `error`.
    async fn park(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Moves `name`'s checkpoint from `from` to `to`; `false` (and no change) if
    /// it is not at `from`.
    async fn move_checkpoint(
        tx: &Self::Tx<'_>,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<bool, StoreError>;

    /// Removes the event at `position` from `name`'s park; `false` if it was
    /// not there (another process retried or skipped it first).
    async fn unpark(tx: &Self::Tx<'_>, name: &str, position: u64) -> Result<bool, StoreError>;

    /// Keeps the event at `position` parked, with a new `error`.
    async fn still_fails(
        &mut self,
        name: &str,
        position: u64,
        error: &str,
    ) -> Result<(), StoreError>;

    /// How many events `name` has parked, by aggregate.
    async fn parked_streams(&mut self, name: &str) -> Result<HashMap<Stream, u64>, StoreError>;
}

/// The read database as a runner sees it: its connection, its checkpoint, and
/// the aggregates with parked events (whose later events are parked too).
pub(super) struct ReadDb<C> {
    pub(super) connection: C,
    pub(super) name: &'static str,
    /// Where it is, for messages: its file, or its schema.
    pub(super) place: String,
    /// The checkpoint as stored (the runner may be past it: see [`IDLE_MOVES`]).
    pub(super) checkpoint: u64,
    pub(super) parked: HashMap<Stream, u64>,
    /// When the stored checkpoint last moved.
    moved_at: Instant,
}

impl<C> ReadDb<C> {
    /// A read database at `checkpoint`, with its parked aggregates counted.
    pub(super) async fn new<P>(
        mut connection: C,
        name: &'static str,
        place: String,
        checkpoint: u64,
    ) -> Result<ReadDb<C>, StoreError>
    where
        C: Database<P>,
    {
        let parked = connection.parked_streams(name).await?;
        Ok(ReadDb {
            connection,
            name,
            place,
            checkpoint,
            parked,
            moved_at: Instant::now(),
        })
    }

    /// Counts the parked aggregates again (after a retry or a skip).
    pub(super) async fn count_parked<P>(&mut self) -> Result<(), StoreError>
    where
        C: Database<P>,
    {
        self.parked = self.connection.parked_streams(self.name).await?;
        Ok(())
    }

    pub(super) fn parked_total(&self) -> u64 {
        self.parked.values().sum()
    }
}

/// Whether a read model of projection `name` in `place`, built by version
/// `stored` of it, is to be rebuilt by this code, version `version` (with a
/// `#[reset]` method if `resets`): not if it is this version's; yes if it is
/// an older one's and the projection can empty it; otherwise it is refused.
/// Older code never overwrites a newer read model. `fresh` says where to start
/// the projection instead.
pub(super) fn to_rebuild(
    name: &str,
    place: &str,
    stored: i64,
    version: u32,
    resets: bool,
    fresh: &str,
) -> Result<bool, StoreError> {
    let refused = |reason: String| StoreError::Invalid {
        what: "projection version",
        reason: format!("`{name}` in {place} was built by version {stored}, {reason}"),
    };
    match stored.cmp(&i64::from(version)) {
        std::cmp::Ordering::Equal => Ok(false),
        std::cmp::Ordering::Less if resets => Ok(true),
        std::cmp::Ordering::Less => Err(refused(format!(
            "this code is version {version}: give the projection a #[reset] method that \
             empties its tables, and its runner rebuilds it from the log; or start it {fresh}"
        ))),
        std::cmp::Ordering::Greater => Err(refused(format!(
            "newer than this code's version {version}: older code does not overwrite a newer \
             read model; run the newer code, or start this one {fresh}"
        ))),
    }
}

/// Where a runner starts: after the stored checkpoint; or, if the read model
/// was built by an older `version` of a projection with a `#[reset]` method,
/// from the start of the log, after emptying the read model, its parked events
/// and its checkpoint in one transaction that also stores the new version (so
/// that of runners starting together, one rebuilds and the others find it
/// rebuilt). Also counts the parked aggregates again.
pub(super) async fn start<P, C: Database<P>>(
    db: &mut ReadDb<C>,
    projection: &mut P,
    version: u32,
    fresh: &str,
) -> Result<Started, StoreError> {
    let (name, place) = (db.name, db.place.clone());
    let tx = db.connection.begin().await?;
    let (stored, position) = C::stored(&tx, name).await?;
    let started = if to_rebuild(name, &place, stored, version, C::RESETS, fresh)? {
        tracing::info!(
            projection = name,
            place,
            stored,
            version,
            "the read model was built by an older version: emptying it to rebuild it"
        );
        empty::<P, C>(tx, name, projection, version).await?;
        Started {
            checkpoint: 0,
            rebuild: Some(Rebuild::Reset),
        }
    } else {
        drop(tx);
        Started::at(checkpoint_of(name, position)?)
    };
    db.checkpoint = started.checkpoint;
    db.moved_at = Instant::now();
    db.count_parked().await?;
    Ok(started)
}

/// Empties the read model of this `version` (its `#[reset]` method), its
/// parked events and its checkpoint, in one transaction, for the runner to
/// rebuild it: [`ProjectionHandle::rebuild`](super::ProjectionHandle::rebuild).
/// Refused if another runner moved the checkpoint, or stored another version.
pub(super) async fn rebuild<P, C: Database<P>>(
    db: &mut ReadDb<C>,
    projection: &mut P,
    version: u32,
) -> Result<(), StoreError> {
    let name = db.name;
    if !C::RESETS {
        return Err(StoreError::Invalid {
            what: "rebuild",
            reason: format!("`{name}` has no #[reset] method to empty its read model: give it one"),
        });
    }
    let from = db.checkpoint;
    let tx = db.connection.begin().await?;
    let (stored, position) = C::stored(&tx, name).await?;
    if stored != i64::from(version) || position != to_i64(from) {
        return Err(StoreError::Invalid {
            what: "rebuild",
            reason: format!(
                "another runner of `{name}` moved its checkpoint from {from} to {position} \
                 (version {stored}): this one does not have its turn"
            ),
        });
    }
    tracing::info!(
        projection = name,
        version,
        "emptying the read model to rebuild it"
    );
    empty::<P, C>(tx, name, projection, version).await?;
    db.checkpoint = 0;
    db.moved_at = Instant::now();
    db.count_parked().await
}

/// In `tx`, then commits it: `projection`'s `#[reset]` method, then its
/// parked events and checkpoint cleared, and `version` stored.
async fn empty<P, C: Database<P>>(
    tx: C::Tx<'_>,
    name: &'static str,
    projection: &mut P,
    version: u32,
) -> Result<(), StoreError> {
    C::reset(&tx, projection)
        .await
        .map_err(|source| StoreError::Backend(Box::new(ResetFailed { name, source })))?;
    C::restart(&tx, name, version).await?;
    C::commit(tx).await
}

/// A `#[reset]` method's error.
#[derive(Debug, thiserror::Error)]
#[error("the #[reset] method of `{name}` failed: {source}")]
struct ResetFailed {
    name: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// A stored checkpoint as a position.
pub(super) fn checkpoint_of(name: &str, position: i64) -> Result<u64, StoreError> {
    u64::try_from(position).map_err(|_| StoreError::Corrupt {
        position: 0,
        what: format!("checkpoint of `{name}` is {position}"),
    })
}

/// Applies `page` in one transaction with the checkpoint's move to its
/// `read_to` (for a page without events, at most every [`IDLE_MOVES`]). An event that cannot be decoded is parked at once, one whose
/// `#[on]` method fails is parked on the `last_attempt` (each with its
/// aggregate's later events); otherwise the transaction is rolled back, and the
/// events before the failed one are applied again in a transaction of their own,
/// so that the runner moves past them while it retries the failed one.
pub(super) async fn apply_page<P, C: Database<P>>(
    db: &mut ReadDb<C>,
    projection: &mut P,
    page: &LogPage,
    last_attempt: bool,
) -> Result<(), Failure> {
    let from = db.checkpoint;
    if page.events.is_empty() && (page.read_to == from || db.moved_at.elapsed() < IDLE_MOVES) {
        // Nothing to apply: no transaction (a live runner polls).
        return Ok(());
    }
    let mut park = BTreeMap::new();
    loop {
        let failed = match apply_events(db, projection, &page.events, &park, page.read_to).await {
            Ok(()) => return Ok(()),
            Err(Applying::Event(failed)) => failed,
            Err(Applying::Database(failure)) => return Err(failure),
        };
        let (done, mut failure) = failed;
        if failure.then != Then::Retry || last_attempt {
            park.insert(done, failure.error);
            continue;
        }
        let event = &page.events[done];
        let reached = event.position - 1;
        if reached > from {
            match apply_events(db, projection, &page.events[..done], &park, reached).await {
                Ok(()) => {
                    failure.reached = Some(reached);
                    failure.applied = done as u64;
                }
                Err(Applying::Event((_, failure)) | Applying::Database(failure)) => {
                    return Err(failure)
                }
            }
        }
        failure.error = format!("{}: {}", describe(event), failure.error);
        return Err(failure);
    }
}

fn describe(event: &RecordedEvent) -> String {
    format!(
        "event `{}` at position {} ({} `{}` version {})",
        event.name, event.position, event.aggregate_type, event.aggregate_id, event.version
    )
}

/// The failure of the event at `index` in `events`: one that cannot be decoded
/// is parked at once, one whose `#[on]` method failed is retried.
fn failed_event(events: &[RecordedEvent], (index, error): (usize, ApplyError)) -> Applying {
    let failure = match error {
        ApplyError::Decode(kind) => {
            Failure::stop(DecodeError::at(&events[index].as_event_ref(), kind), None)
        }
        error @ ApplyError::Handler(_) => Failure::retry_event(error),
    };
    Applying::Event((index, failure))
}

/// Why [`apply_events`] rolled back.
enum Applying {
    /// The event at this index failed: retry it, or park it if the failure says
    /// trying again is of no use.
    Event((usize, Failure)),
    /// The database failed (or another runner moved the checkpoint).
    Database(Failure),
}

fn database(error: StoreError) -> Applying {
    Applying::Database(Failure::retry(error, None))
}

/// Applies `events` in one transaction, parking those at the indexes in `park`
/// (with the error to keep) and those of aggregates with parked events, and
/// moves the checkpoint to `to`; or changes nothing.
async fn apply_events<P, C: Database<P>>(
    db: &mut ReadDb<C>,
    projection: &mut P,
    events: &[RecordedEvent],
    park: &BTreeMap<usize, String>,
    to: u64,
) -> Result<(), Applying> {
    let name = db.name;
    let from = db.checkpoint;
    let tx = db.connection.begin().await.map_err(database)?;
    let mut parked_now: HashMap<Stream, u64> = HashMap::new();
    for (done, event) in events.iter().enumerate() {
        let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let behind = db.parked.contains_key(&stream) || parked_now.contains_key(&stream);
        let error = match park.get(&done) {
            Some(error) => Some(error.clone()),
            None if behind => {
                Some("parked behind an earlier parked event of its aggregate".to_owned())
            }
            None => None,
        };
        if let Some(error) = error {
            tracing::warn!(projection = name, position = event.position, %error, "event parked");
            // The statements queued before first: a failed one aborts the
            // transaction, and is its event's failure, not the park's.
            C::flush(&tx)
                .await
                .map_err(|failed| failed_event(events, failed))?;
            C::park(&tx, name, event, &error).await.map_err(database)?;
            *parked_now.entry(stream).or_default() += 1;
            continue;
        }
        C::apply(&tx, projection, event, done)
            .await
            .map_err(|failed| failed_event(events, failed))?;
    }
    C::flush(&tx)
        .await
        .map_err(|failed| failed_event(events, failed))?;
    failpoint::hit("projection.before_commit");
    let tx = if failpoint::broken("projection.checkpoint_apart") {
        // The control of the crash tests: the writes and the checkpoint in
        // separate transactions, which a crash between them applies twice.
        C::commit(tx).await.map_err(database)?;
        failpoint::hit("projection.between_commits");
        db.connection.begin().await.map_err(database)?
    } else {
        tx
    };
    let from = if failpoint::broken("projection.move_without_compare") {
        // The control of the compare-and-set tests: the checkpoint moved from
        // wherever it is, so a runner that lost its turn writes anyway.
        let (_, stored) = C::stored(&tx, name).await.map_err(database)?;
        checkpoint_of(name, stored).map_err(database)?
    } else {
        from
    };
    let moved = C::move_checkpoint(&tx, name, from, to)
        .await
        .map_err(database)?;
    if !moved {
        let then = match C::LOST_TURN {
            Then::Standby => "stands by",
            _ => "stops",
        };
        let error =
            format!("another runner of `{name}` moved its checkpoint from {from}: this one {then}");
        let mut failure = Failure::stop(error, None);
        failure.then = C::LOST_TURN;
        return Err(Applying::Database(failure));
    }
    C::commit(tx).await.map_err(database)?;
    failpoint::hit("projection.after_commit");
    db.checkpoint = to;
    db.moved_at = Instant::now();
    for (stream, count) in parked_now {
        *db.parked.entry(stream).or_default() += count;
    }
    Ok(())
}

/// Applies the parked `events` (in position order) aggregate by aggregate, each
/// in a transaction of its own that also removes it from the park; an
/// aggregate's first event that fails again stays parked with its new error,
/// and so do its later ones. An event that another process took from the park
/// meanwhile is rolled back, not applied twice.
pub(super) async fn retry_parked<P, C: Database<P>>(
    db: &mut ReadDb<C>,
    projection: &mut P,
    events: &[RecordedEvent],
) -> Result<Retried, StoreError> {
    let name = db.name;
    let mut failed: Vec<Stream> = Vec::new();
    let mut applied = 0;
    for event in events {
        let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if failed.contains(&stream) {
            continue;
        }
        let tx = db.connection.begin().await?;
        let result = match C::apply(&tx, projection, event, 0).await {
            Ok(()) => C::flush(&tx).await,
            failed => failed,
        };
        match result {
            Ok(()) => {
                if C::unpark(&tx, name, event.position).await? {
                    C::commit(tx).await?;
                    applied += 1;
                }
            }
            Err((_, error)) => {
                drop(tx);
                let error = error.to_string();
                db.connection
                    .still_fails(name, event.position, &error)
                    .await?;
                failed.push(stream);
            }
        }
    }
    db.count_parked().await?;
    Ok(Retried {
        applied,
        parked: db.parked_total(),
    })
}

/// The parked events of `rows`, read from `app`'s store (the park keeps only
/// where they are), to retry them.
pub(super) async fn parked_events(
    app: &App,
    rows: Vec<ParkedEvent>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let event = app.store().read_event(row.event_id).await?;
        let event = event.ok_or_else(|| StoreError::Corrupt {
            position: row.position,
            what: format!("parked event {} is not in the event store", row.event_id),
        })?;
        events.push(event);
    }
    Ok(events)
}

pub(super) use crate::store::durable::to_i64;

#[cfg(test)]
mod tests {
    use super::to_rebuild;
    use crate::error::StoreError;

    fn refused(result: Result<bool, StoreError>) -> String {
        match result {
            Err(StoreError::Invalid {
                what: "projection version",
                reason,
            }) => reason,
            other => panic!("not refused as a projection version: {other:?}"),
        }
    }

    #[test]
    fn an_older_version_is_rebuilt_with_a_reset_and_a_newer_one_never() {
        let check = |stored, resets| to_rebuild("ledger", "read.db", stored, 2, resets, "anew");
        assert!(!check(2, false).unwrap());
        assert!(!check(2, true).unwrap());
        assert!(check(1, true).unwrap());
        let reason = refused(check(1, false));
        assert!(reason.contains("built by version 1"), "{reason}");
        assert!(reason.contains("#[reset]"), "{reason}");
        for resets in [false, true] {
            let reason = refused(check(3, resets));
            assert!(
                reason.contains("newer than this code's version 2"),
                "{reason}"
            );
        }
    }
}
