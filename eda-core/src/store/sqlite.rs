//! The embedded default: one SQLite file in WAL mode.
//!
//! A writer thread owns the only write connection. It takes every append that is
//! waiting, runs them in one `BEGIN IMMEDIATE` transaction (each in its own
//! savepoint, so one conflict does not fail the others) and commits once: with
//! concurrent callers several commands share one fsync (group commit). Reads run on
//! their own threads and connections, so async callers never block on file I/O and
//! readers never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::envelope::{
    IdempotencyRecord, Metadata, NewEvent, RecordedEvent, ReplayEvent, Snapshot, StreamId,
};
use crate::error::StoreError;
use crate::failpoint;
use crate::store::durable::{backend, to_i64, AppendRequest};
use crate::store::{check_names, Appended, EventStore};

/// The schema version this code creates and reads.
const SCHEMA_VERSION: u32 = 3;

/// How durable an acknowledged append is (SQLite's `synchronous` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SqliteSynchronous {
    /// An acknowledged append survives a power loss (fsync at every commit).
    #[default]
    Full,
    /// Faster: an acknowledged append survives a crash of the process, but the last
    /// commits before a power loss or OS crash can be lost (WAL is synced only at
    /// checkpoints).
    Normal,
}

/// Settings of a [`SqliteStore`]; `SqliteOptions::default()` is what
/// [`SqliteStore::open`] uses.
#[derive(Debug, Clone)]
#[must_use]
pub struct SqliteOptions {
    synchronous: SqliteSynchronous,
    busy_timeout: Duration,
    readers: usize,
    max_batch: usize,
    poll_for_reply: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: SqliteSynchronous::Full,
            busy_timeout: Duration::from_secs(5),
            readers: 2,
            max_batch: 256,
            poll_for_reply: Duration::from_millis(1),
        }
    }
}

impl SqliteOptions {
    /// Default settings: `synchronous = FULL`, 5 s busy timeout, 2 reader threads,
    /// batches of up to 256 appends, 1 ms of polling for a lone append's reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Durability of acknowledged appends. Default: [`SqliteSynchronous::Full`].
    pub fn synchronous(mut self, synchronous: SqliteSynchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How long a connection waits for another process holding the database lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Number of reader threads (each with its own connection). Default: 2.
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// The most appends one transaction commits together. Default: 256.
    pub fn max_batch(mut self, appends: usize) -> Self {
        self.max_batch = appends.max(1);
        self
    }

    /// How long the only append or read in flight may poll for its reply, yielding
    /// to other tasks between polls, instead of sleeping until the writer or reader
    /// thread wakes it. Default: 1 ms. `Duration::ZERO` never polls.
    ///
    /// Waking a sleeping thread costs 10 to 300 µs on a small virtual machine,
    /// as much as a whole `NORMAL` commit, and a caller that sleeps through its
    /// reply also lets the writer thread fall asleep before the next append: a
    /// sequential caller gets a third to a half fewer appends per second without
    /// polling (see the README's performance section). The price is CPU: the
    /// caller's thread stays busy while it waits, yielding its CPU to any thread
    /// that wants it. The caller polls only when its request is the only one in
    /// flight (and, for an append, when the writer's last transaction took no
    /// longer than this); concurrent callers (group commit) always sleep. A poller
    /// that finds it lost its CPU for half a millisecond (another busy thread, or a
    /// busy runtime) stops, and callers then sleep for the next 50 ms: on a busy
    /// machine polling would only take CPU time from the writer.
    pub fn poll_for_reply(mut self, window: Duration) -> Self {
        self.poll_for_reply = window;
        self
    }
}

/// An [`EventStore`] in one SQLite file (feature `sqlite`, on by default).
///
/// Five tables, created and migrated when the store opens: `eda_events`
/// (position, event id, aggregate type and id, version, event name and schema
/// version, payload and metadata as JSON text, recorded-at in microseconds),
/// `eda_aggregates` (aggregate type, id, current version), `eda_snapshots` (the
/// latest snapshot per aggregate), `eda_idempotency` (each idempotency key and
/// what its command stored) and `eda_schema` (the schema version; a database
/// written by a newer eda is refused, never downgraded).
///
/// SQLite keeps recent commits in the write-ahead log (`bank.db-wal`) until a
/// checkpoint: call [`SqliteStore::close`] before the program ends, so that the
/// `.db` file alone holds the database, and copy a database in use with
/// [`SqliteStore::backup`] (or copy all three files, `.db`, `-wal` and `-shm`,
/// while nothing writes).
///
/// ```no_run
/// use eda::prelude::*;
/// # async fn demo() -> Result<(), eda::StoreError> {
/// let store = SqliteStore::open("bank.db").await?;
/// let app = App::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<WriterJob>,
    readers: mpsc::Sender<ReaderMessage>,
    /// How many reader threads there are (each takes one stop message).
    reader_threads: usize,
    pace: Arc<Pace>,
    /// Set by [`SqliteStore::close`]: every later call is refused.
    closed: AtomicBool,
}

/// What a reader thread is sent.
enum ReaderMessage {
    Read(ReadJob),
    /// Close the connection and end the thread, then say so.
    Stop(oneshot::Sender<()>),
}

/// What a waiting caller needs to decide whether to poll for its reply instead of
/// sleeping until it is woken.
struct Pace {
    /// Appends and reads sent and not yet answered.
    in_flight: AtomicUsize,
    /// How long the writer's last transaction took, in microseconds.
    last_write_micros: AtomicU64,
    /// [`SqliteOptions::poll_for_reply`].
    poll_window: Duration,
    /// Until when callers sleep instead of polling (microseconds since `epoch`),
    /// after a poller found itself descheduled: the CPU is busy.
    no_polling_until: AtomicU64,
    epoch: std::time::Instant,
}

/// A poller that finds this long between two of its polls lost its CPU to another
/// thread (or its runtime is busy): polling would only slow the writer down.
const DESCHEDULED: Duration = Duration::from_micros(500);

/// How long callers then sleep instead of polling.
const BACK_OFF: Duration = Duration::from_millis(50);

impl Pace {
    fn micros(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

/// Counts an append as in flight until it is dropped (answered or cancelled).
struct InFlight<'a>(&'a Pace);

impl<'a> InFlight<'a> {
    fn enter(pace: &'a Pace) -> Self {
        pace.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(pace)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The reply of a writer or reader thread. The only request in flight polls for
/// it for up to [`SqliteOptions::poll_for_reply`], yielding to other threads and
/// tasks between polls, unless it is `expected` to take longer than that; then, or
/// with several requests in flight (group commit), or while the CPU is busy, it
/// sleeps until woken.
async fn reply_of<T>(
    mut rx: oneshot::Receiver<Result<T, StoreError>>,
    pace: &Pace,
    expected: Duration,
) -> Result<T, StoreError> {
    let window = pace.poll_window;
    let start = std::time::Instant::now();
    if pace.in_flight.load(Ordering::Relaxed) == 1
        && !window.is_zero()
        && expected <= window
        && pace.micros(start) >= pace.no_polling_until.load(Ordering::Relaxed)
    {
        let mut last = start;
        loop {
            match rx.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(closed()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // Let a thread waiting for this CPU (the writer, perhaps) have it.
            std::thread::yield_now();
            YieldNow(false).await;
            let now = std::time::Instant::now();
            if now.duration_since(last) > DESCHEDULED {
                let until = pace.micros(now + BACK_OFF);
                pace.no_polling_until.store(until, Ordering::Relaxed);
                break;
            }
            if now.duration_since(start) > window {
                break;
            }
            last = now;
        }
    }
    rx.await.map_err(|_| closed())?
}

/// Lets the executor run other tasks once, on any runtime.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// What the writer thread is sent.
enum WriterJob {
    Write(WriteRequest),
    /// Write what came before, move the WAL's contents into the database file,
    /// close the connection (SQLite then removes the `-wal` and `-shm` files),
    /// answer, and end the thread.
    Close(oneshot::Sender<Result<(), StoreError>>),
    /// A read sent while nothing else was in flight: the writer thread is awake (or
    /// about to be woken for the append that usually follows a load) where a
    /// reader thread would first have to be woken.
    Read(ReadJob),
}

/// What the writer thread writes: appends, and snapshots (which need the one write
/// connection too).
enum WriteRequest {
    Append(AppendRequest),
    Snapshot(SnapshotRequest),
}

struct SnapshotRequest {
    aggregate_type: String,
    aggregate_id: String,
    snapshot: Snapshot,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database at `path`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let (writer, requests) = mpsc::channel();
        let pace = Arc::new(Pace {
            in_flight: AtomicUsize::new(0),
            last_write_micros: AtomicU64::new(0),
            poll_window: options.poll_for_reply,
            no_polling_until: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        });
        let writer_pace = Arc::clone(&pace);
        let (writer_path, writer_options) = (path.clone(), options.clone());
        spawn_connected(
            "eda-sqlite-writer".into(),
            move || open_writer(&writer_path, &writer_options),
            move |(connection, file)| {
                write_loop(connection, file, requests, options.max_batch, &writer_pace)
            },
        )
        .await?;
        let (readers, jobs) = mpsc::channel::<ReaderMessage>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..options.readers {
            let (path, options, jobs) = (path.clone(), options.clone(), Arc::clone(&jobs));
            spawn_connected(
                format!("eda-sqlite-reader-{i}"),
                move || open_reader(&path, &options),
                move |connection| read_loop(connection, jobs),
            )
            .await?;
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer,
                readers,
                reader_threads: options.readers,
                pace,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Closes the store: waits for the appends already sent, moves everything
    /// from the write-ahead log into the database file
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`) and closes every connection, so the
    /// `.db` file alone holds the whole database (SQLite removes the `-wal` and
    /// `-shm` files). Every later call on any handle of this store gets
    /// [`StoreError::Closed`]; closing again does nothing.
    ///
    /// When the last handle is dropped without `close`, the store's threads do
    /// the same in the background, if the process lives long enough: call
    /// `close().await` (or [`App::close`](crate::App::close)) before a program
    /// ends. To copy a database that is in use, see [`SqliteStore::backup`].
    pub async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut stopped = Vec::new();
        for _ in 0..self.inner.reader_threads {
            let (done, stop) = oneshot::channel();
            if self.inner.readers.send(ReaderMessage::Stop(done)).is_ok() {
                stopped.push(stop);
            }
        }
        for stop in stopped {
            let _ = stop.await;
        }
        let (reply, closed) = oneshot::channel();
        self.inner
            .writer
            .send(WriterJob::Close(reply))
            .map_err(|_| StoreError::Closed)?;
        closed.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes a consistent copy of the database to `path` (`VACUUM INTO`), while
    /// the store stays in use: the copy is one file, complete without a `-wal`
    /// file, and opens with [`SqliteStore::open`]. `path` must not exist yet.
    pub async fn backup(&self, path: impl AsRef<Path>) -> Result<(), StoreError> {
        let target = path.as_ref().to_string_lossy().into_owned();
        self.read(false, move |connection| {
            connection
                .execute("VACUUM INTO ?1", params![target])
                .map(|_| ())
                .map_err(backend)
        })
        .await
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection and waits for its result without blocking.
    /// An aggregate's load (`on_writer_if_idle`) runs on the writer thread instead
    /// when nothing else is in flight: that thread is still awake after the last
    /// append, and a sequential caller's load is followed by an append anyway,
    /// while a sleeping reader thread would cost a wake-up as long as the read.
    /// Reads of the global log (projections, the outbox) never take the writer's time.
    async fn read<T: Send + 'static>(
        &self,
        on_writer_if_idle: bool,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |connection| {
            let _ = tx.send(f(connection));
        });
        let pace = &self.inner.pace;
        let idle = pace.in_flight.load(Ordering::Relaxed) == 0;
        let _in_flight = InFlight::enter(pace);
        let sent = if on_writer_if_idle && idle {
            self.inner.writer.send(WriterJob::Read(job)).is_ok()
        } else {
            self.inner.readers.send(ReaderMessage::Read(job)).is_ok()
        };
        if !sent {
            return Err(closed());
        }
        reply_of(rx, pace, Duration::ZERO).await
    }
}

impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        self.check_open()?;
        check_names(stream, &events, metadata)?;
        let (reply, rx) = oneshot::channel();
        let request = AppendRequest::new(stream, expected_version, events, metadata, reply)?;
        let pace = &self.inner.pace;
        let _in_flight = InFlight::enter(pace);
        self.inner
            .writer
            .send(WriterJob::Write(WriteRequest::Append(request)))
            .map_err(|_| closed())?;
        let expected = Duration::from_micros(pace.last_write_micros.load(Ordering::Relaxed));
        match reply_of(rx, pace, expected).await {
            // The writer took the append and ended without answering (it
            // panicked): it may have committed.
            Err(StoreError::Closed) => Err(StoreError::OutcomeUnknown { source: None }),
            result => result,
        }
    }

    async fn close(&self) -> Result<(), StoreError> {
        SqliteStore::close(self).await
    }

    async fn save_snapshot(
        &self,
        stream: StreamId<'_>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        let request = SnapshotRequest {
            aggregate_type: stream.aggregate_type.to_owned(),
            aggregate_id: stream.aggregate_id.to_owned(),
            snapshot: snapshot.clone(),
            reply,
        };
        self.inner
            .writer
            .send(WriterJob::Write(WriteRequest::Snapshot(request)))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn load_snapshot(&self, stream: StreamId<'_>) -> Result<Option<Snapshot>, StoreError> {
        let (aggregate_type, aggregate_id) = owned(stream);
        self.read(true, move |connection| {
            snapshot_of(connection, &aggregate_type, &aggregate_id)
        })
        .await
    }

    /// Both reads in one job, on one connection: one hand-over between threads.
    async fn read_from_snapshot(
        &self,
        stream: StreamId<'_>,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<ReplayEvent>), StoreError> {
        let (aggregate_type, aggregate_id) = owned(stream);
        self.read(true, move |connection| {
            let snapshot = snapshot_of(connection, &aggregate_type, &aggregate_id)?;
            // From the snapshot's own event on, so a snapshot ahead of the stream shows.
            let after = snapshot.as_ref().map_or(0, |s| s.version.saturating_sub(1));
            let tail = replay_events(connection, &aggregate_type, &aggregate_id, after, limit)?;
            Ok((snapshot, tail))
        })
        .await
    }

    async fn read_for_replay(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        let (aggregate_type, aggregate_id) = owned(stream);
        self.read(true, move |connection| {
            replay_events(
                connection,
                &aggregate_type,
                &aggregate_id,
                after_version,
                limit,
            )
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (aggregate_type, aggregate_id) = owned(stream);
        self.read(true, move |connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM eda_events \
                     WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version > ?3 ORDER BY version"
                ))
                .map_err(backend)?;
            let rows = statement.query(params![aggregate_type, aggregate_id, to_i64(after_version)]).map_err(backend)?;
            collect(rows)
        })
        .await
    }

    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(false, move |connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM eda_events WHERE position > ?1 ORDER BY position LIMIT ?2"
                ))
                .map_err(backend)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = statement.query(params![to_i64(after_position), limit]).map_err(backend)?;
            collect(rows)
        })
        .await
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_owned();
        self.read(true, move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT aggregate_type, aggregate_id, command, fingerprint, expected_version,
                            version, position FROM eda_idempotency WHERE key = ?1",
                )
                .map_err(backend)?;
            let row = statement
                .query_row(params![key], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<Vec<u8>>>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, Option<i64>>(6)?,
                    ))
                })
                .optional()
                .map_err(backend)?;
            let Some((
                aggregate_type,
                aggregate_id,
                command,
                fingerprint,
                expected,
                version,
                position,
            )) = row
            else {
                return Ok(None);
            };
            let corrupt = |what: &str| StoreError::Corrupt {
                position: 0,
                what: format!("idempotency key `{key}`: {what}"),
            };
            Ok(Some(IdempotencyRecord {
                aggregate_type,
                aggregate_id,
                command,
                fingerprint: fingerprint
                    .map(|bytes| {
                        Uuid::from_slice(&bytes).map_err(|_| corrupt("fingerprint is not 16 bytes"))
                    })
                    .transpose()?,
                expected_version: u64::try_from(expected)
                    .map_err(|_| corrupt("negative version"))?,
                version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
                position: position.and_then(|p| u64::try_from(p).ok()),
                key,
            }))
        })
        .await
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.read(true, move |connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM eda_events WHERE event_id = ?1"
                ))
                .map_err(backend)?;
            let rows = statement
                .query(params![event_id.as_bytes().as_slice()])
                .map_err(backend)?;
            Ok(collect(rows)?.pop())
        })
        .await
    }
}

/// The stream's names, owned, for a job on another thread.
fn owned(stream: StreamId<'_>) -> (String, String) {
    (
        stream.aggregate_type.to_owned(),
        stream.aggregate_id.to_owned(),
    )
}

const COLUMNS: &str =
    "position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata, recorded_at";

/// The stream's snapshot; a row out of range counts as none (the aggregate is
/// then replayed).
fn snapshot_of(
    connection: &Connection,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<Snapshot>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT version, snapshot_version, payload, fingerprint FROM eda_snapshots \
             WHERE aggregate_type = ?1 AND aggregate_id = ?2",
        )
        .map_err(backend)?;
    let snapshot = statement
        .query_row(params![aggregate_type, aggregate_id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    Ok(
        snapshot.and_then(|(version, snapshot_version, payload, fingerprint)| {
            Some(Snapshot {
                version: u64::try_from(version).ok()?,
                snapshot_version: u32::try_from(snapshot_version).ok()?,
                payload,
                fingerprint: fingerprint as u64,
            })
        }),
    )
}

/// At most `limit` of the stream's events after `after_version`, with replay's
/// columns only: no metadata to parse, no stream name per row. A row that does not
/// have the stored shape is a [`StoreError::Corrupt`] naming its position.
fn replay_events(
    connection: &Connection,
    aggregate_type: &str,
    aggregate_id: &str,
    after_version: u64,
    limit: usize,
) -> Result<Vec<ReplayEvent>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT position, version, name, event_version, payload FROM eda_events \
             WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version > ?3 \
             ORDER BY version LIMIT ?4",
        )
        .map_err(backend)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = statement
        .query(params![
            aggregate_type,
            aggregate_id,
            to_i64(after_version),
            limit
        ])
        .map_err(backend)?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let columns = Columns::of(row)?;
        events.push(ReplayEvent {
            position: columns.position,
            version: u64::try_from(columns.integer(1, "version")?)
                .map_err(|_| columns.corrupt("negative version".into()))?,
            name: columns.text(2, "name")?,
            event_version: u32::try_from(columns.integer(3, "event_version")?)
                .map_err(|_| columns.corrupt("event_version out of range".into()))?,
            payload: columns.text(4, "payload")?,
        });
    }
    Ok(events)
}

/// A row's columns, each read with a [`StoreError::Corrupt`] naming the row's
/// position when it does not have the stored type.
struct Columns<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    position: u64,
}

impl<'a, 'r> Columns<'a, 'r> {
    /// `row`, whose first column is its position.
    fn of(row: &'a rusqlite::Row<'r>) -> Result<Self, StoreError> {
        let position: i64 = row.get(0).map_err(backend)?;
        Ok(Columns {
            row,
            position: u64::try_from(position).unwrap_or_default(),
        })
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            position: self.position,
            what,
        }
    }

    fn value(&self, i: usize) -> Result<rusqlite::types::ValueRef<'_>, StoreError> {
        self.row
            .get_ref(i)
            .map_err(|e| self.corrupt(format!("column {i}: {e}")))
    }

    fn text(&self, i: usize, name: &str) -> Result<String, StoreError> {
        self.value(i)?
            .as_str()
            .map(str::to_owned)
            .map_err(|e| self.corrupt(format!("{name} is not text: {e}")))
    }

    fn integer(&self, i: usize, name: &str) -> Result<i64, StoreError> {
        self.value(i)?
            .as_i64()
            .map_err(|e| self.corrupt(format!("{name} is not an integer: {e}")))
    }
}

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        events.push(recorded(row)?);
    }
    Ok(events)
}

/// One row as a [`RecordedEvent`]; a row that does not have the stored shape is a
/// [`StoreError::Corrupt`] naming its position.
fn recorded(row: &rusqlite::Row<'_>) -> Result<RecordedEvent, StoreError> {
    let columns = Columns::of(row)?;
    let event_id = columns
        .value(1)?
        .as_blob()
        .ok()
        .and_then(|bytes| Uuid::from_slice(bytes).ok())
        .ok_or_else(|| columns.corrupt("event_id is not a 16-byte id".into()))?;
    let metadata = columns.text(8, "metadata")?;
    let metadata: Metadata = serde_json::from_str(&metadata)
        .map_err(|e| columns.corrupt(format!("metadata is not valid: {e}")))?;
    let micros = columns.integer(9, "recorded_at")?;
    Ok(RecordedEvent {
        event_id,
        aggregate_type: columns.text(2, "aggregate_type")?,
        aggregate_id: columns.text(3, "aggregate_id")?,
        version: u64::try_from(columns.integer(4, "version")?)
            .map_err(|_| columns.corrupt("negative version".into()))?,
        position: columns.position,
        name: columns.text(5, "name")?,
        event_version: u32::try_from(columns.integer(6, "event_version")?)
            .map_err(|_| columns.corrupt("event_version out of range".into()))?,
        payload: columns.text(7, "payload")?,
        metadata,
        recorded_at: DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default(),
    })
}

/// Starts a thread that opens its own connection (so the caller never waits on
/// file I/O), reports whether that worked, then runs `run` with it.
async fn spawn_connected<C: Send + 'static>(
    name: String,
    open: impl FnOnce() -> Result<C, StoreError> + Send + 'static,
    run: impl FnOnce(C) + Send + 'static,
) -> Result<(), StoreError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    thread::Builder::new()
        .name(name)
        .spawn(move || match open() {
            Ok(connection) => {
                let _ = ready_tx.send(Ok(()));
                run(connection);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(backend)?;
    ready_rx.await.map_err(|_| closed())?
}

fn open_connection(
    path: &Path,
    flags: OpenFlags,
    options: &SqliteOptions,
) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(path, flags).map_err(backend)?;
    connection
        .busy_timeout(options.busy_timeout)
        .map_err(backend)?;
    let synchronous = match options.synchronous {
        SqliteSynchronous::Full => "FULL",
        SqliteSynchronous::Normal => "NORMAL",
    };
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};"
        ))
        .map_err(backend)?;
    Ok(connection)
}

fn open_writer(
    path: &Path,
    options: &SqliteOptions,
) -> Result<(Connection, DatabaseFile), StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut connection = open_connection(path, flags, options)?;
    migrate(&mut connection)?;
    let file = DatabaseFile::of(path).map_err(backend)?;
    Ok((connection, file))
}

/// The database file the writer opened, to notice it being deleted or replaced
/// underneath the store: appends would then go to a file no one can open again.
struct DatabaseFile {
    path: PathBuf,
    #[cfg(unix)]
    id: (u64, u64),
    /// Once the file was found gone, it stays gone for this store.
    gone: bool,
}

impl DatabaseFile {
    fn of(path: &Path) -> std::io::Result<DatabaseFile> {
        // Absolute: the process may change its working directory later.
        let path = std::fs::canonicalize(path)?;
        let metadata = std::fs::metadata(&path)?;
        #[cfg(not(unix))]
        let _ = metadata;
        Ok(DatabaseFile {
            path,
            #[cfg(unix)]
            id: Self::id(&metadata),
            gone: false,
        })
    }

    #[cfg(unix)]
    fn id(metadata: &std::fs::Metadata) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        (metadata.dev(), metadata.ino())
    }

    /// Whether the path still names the file the store opened (one `stat`).
    fn still_there(&mut self) -> bool {
        if self.gone {
            return false;
        }
        let metadata = std::fs::metadata(&self.path);
        #[cfg(unix)]
        let same = metadata.is_ok_and(|m| Self::id(&m) == self.id);
        #[cfg(not(unix))]
        let same = metadata.is_ok();
        self.gone = !same;
        same
    }

    fn error(&self) -> StoreError {
        StoreError::FileChanged {
            path: self.path.clone(),
        }
    }
}

fn open_reader(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    open_connection(path, flags, options)
}

/// Creates or upgrades the schema in one transaction; refuses a newer schema.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS eda_schema (version INTEGER NOT NULL)")
        .map_err(backend)?;
    let found: Option<i64> = tx
        .query_row("SELECT MAX(version) FROM eda_schema", [], |row| row.get(0))
        .map_err(backend)?;
    let found = found.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX));
    if found > SCHEMA_VERSION {
        return Err(StoreError::IncompatibleSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        tx.execute_batch(
            "CREATE TABLE eda_events (
                 position INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_id BLOB NOT NULL UNIQUE,
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 name TEXT NOT NULL,
                 event_version INTEGER NOT NULL,
                 payload TEXT NOT NULL,
                 metadata TEXT NOT NULL,
                 recorded_at INTEGER NOT NULL,
                 UNIQUE (aggregate_type, aggregate_id, version)
             );
             CREATE TABLE eda_aggregates (
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 PRIMARY KEY (aggregate_type, aggregate_id)
             ) WITHOUT ROWID;
             DELETE FROM eda_schema;
             INSERT INTO eda_schema (version) VALUES (1);",
        )
        .map_err(backend)?;
    }
    if found < 2 {
        tx.execute_batch(
            "CREATE TABLE eda_snapshots (
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 snapshot_version INTEGER NOT NULL,
                 payload TEXT NOT NULL,
                 fingerprint INTEGER NOT NULL,
                 PRIMARY KEY (aggregate_type, aggregate_id)
             ) WITHOUT ROWID;
             UPDATE eda_schema SET version = 2;",
        )
        .map_err(backend)?;
    }
    if found < 3 {
        // Each idempotency key's outcome, no-ops included; the keys of stored
        // events are filled in (those of earlier no-ops were never stored).
        tx.execute_batch(
            "CREATE TABLE eda_idempotency (
                 key TEXT PRIMARY KEY,
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 command TEXT NOT NULL,
                 fingerprint BLOB,
                 expected_version INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 position INTEGER,
                 recorded_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             INSERT INTO eda_idempotency
                 (key, aggregate_type, aggregate_id, command, expected_version, version, position, recorded_at)
             SELECT json_extract(metadata, '$.idempotency_key'), min(aggregate_type), min(aggregate_id),
                    coalesce(min(json_extract(metadata, '$.command')), ''), min(version) - 1,
                    max(version), max(position), min(recorded_at)
             FROM eda_events WHERE json_extract(metadata, '$.idempotency_key') IS NOT NULL GROUP BY 1;
             UPDATE eda_schema SET version = 3;",
        )
        .map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

/// The next request: a sequential caller sends its next append a few microseconds
/// after its reply, so wait for it briefly before going to sleep (waking a sleeping
/// thread costs more than the wait on this kind of machine).
fn next_request(requests: &mpsc::Receiver<WriterJob>) -> Option<WriterJob> {
    let spin_until = std::time::Instant::now() + Duration::from_micros(50);
    loop {
        match requests.try_recv() {
            Ok(request) => return Some(request),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if std::time::Instant::now() < spin_until => {
                std::hint::spin_loop()
            }
            Err(mpsc::TryRecvError::Empty) => return requests.recv().ok(),
        }
    }
}

fn write_loop(
    mut connection: Connection,
    mut file: DatabaseFile,
    requests: mpsc::Receiver<WriterJob>,
    max_batch: usize,
    pace: &Pace,
) {
    let mut close = None;
    while let Some(first) = next_request(&requests) {
        let mut batch = Vec::new();
        let mut job = Some(first);
        while let Some(next) = job.take() {
            match next {
                // Reads run at once, outside any transaction.
                WriterJob::Read(read) => read(&connection),
                WriterJob::Write(request) => batch.push(request),
                WriterJob::Close(reply) => {
                    close = Some(reply);
                    break;
                }
            }
            if batch.len() < max_batch {
                job = requests.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            if file.still_there() {
                write_batch(&mut connection, batch);
            } else {
                let results = batch.iter().map(|_| Err(file.error())).collect();
                reply(batch, results);
            }
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            pace.last_write_micros.store(micros, Ordering::Relaxed);
        }
        if close.is_some() {
            break;
        }
    }
    // Closed, or every handle dropped: leave the whole database in its file.
    let result = checkpoint_and_close(connection, &mut file);
    if let Some(reply) = close {
        let _ = reply.send(result);
    }
}

/// Moves the write-ahead log into the database file and closes the writer's
/// connection (the last one, after the readers: SQLite then deletes the WAL).
fn checkpoint_and_close(connection: Connection, file: &mut DatabaseFile) -> Result<(), StoreError> {
    if !file.still_there() {
        return Err(file.error());
    }
    let checkpoint = connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(backend);
    let closed = connection.close().map_err(|(_, e)| backend(e));
    match checkpoint? {
        0 => closed,
        _ => Err(StoreError::CheckpointBlocked),
    }
}

/// Runs every request of `batch` in one transaction, each in a savepoint, commits,
/// then replies to each. If the commit fails, all of them fail.
fn write_batch(connection: &mut Connection, batch: Vec<WriteRequest>) {
    let tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let results = batch.iter().map(|_| Err(backend_ref(&e))).collect();
            return reply(batch, results);
        }
    };
    let recorded_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    // Savepoints keep one request's failure from undoing the others; a lone
    // request needs none: if it fails, the whole transaction is rolled back.
    let isolate = batch.len() > 1;
    let mut results = Vec::with_capacity(batch.len());
    for request in &batch {
        let run = || match request {
            WriteRequest::Append(append) => append_in_savepoint(&tx, append, recorded_at),
            WriteRequest::Snapshot(snapshot) => save_snapshot(&tx, snapshot).map(|()| Appended {
                version: 0,
                position: 0,
            }),
        };
        results.push(if isolate {
            in_savepoint(&tx, run)
        } else {
            run()
        });
        if tx.is_autocommit() {
            break;
        }
    }
    if tx.is_autocommit() {
        // SQLite rolled the whole transaction back (disk full, I/O error): none of
        // the batch is stored, and going on would run the rest outside a transaction.
        let results = batch.iter().map(|_| Err(StoreError::RolledBack)).collect();
        return reply(batch, results);
    }
    if !isolate && results.iter().any(Result::is_err) {
        drop(tx); // rolls back whatever the failed request wrote
        return reply(batch, results);
    }
    if failpoint::armed("sqlite.ack_before_commit") {
        // The bug the fault tests must catch: acknowledging before the commit.
        reply(batch, results);
        // Give the caller time to report the acknowledgement before the crash.
        failpoint::hit_after("sqlite.ack_before_commit", Duration::from_millis(300));
        let _ = tx.commit();
        return;
    }
    failpoint::hit("sqlite.before_commit");
    let results = match tx.commit() {
        Ok(()) => results,
        // A full disk or a lock held elsewhere stops the commit before it is
        // written; after another failure (an fsync that failed, say) the commit
        // may be in the write-ahead log and come back when the file is opened.
        Err(e) if commit_refused(&e) => batch.iter().map(|_| Err(backend_ref(&e))).collect(),
        Err(e) => batch
            .iter()
            .map(|request| match request {
                WriteRequest::Append(_) => Err(StoreError::OutcomeUnknown {
                    source: Some(Box::new(backend_ref(&e))),
                }),
                WriteRequest::Snapshot(_) => Err(backend_ref(&e)),
            })
            .collect(),
    };
    failpoint::hit("sqlite.after_commit");
    reply(batch, results);
}

/// Sends each request its result (a snapshot's `Appended` is unused).
fn reply(batch: Vec<WriteRequest>, results: Vec<Result<Appended, StoreError>>) {
    for (request, result) in batch.into_iter().zip(results) {
        match request {
            WriteRequest::Append(append) => {
                let _ = append.reply.send(result);
            }
            WriteRequest::Snapshot(snapshot) => {
                let _ = snapshot.reply.send(result.map(|_| ()));
            }
        }
    }
}

/// Runs `f` in a savepoint, rolled back if `f` fails, so one request's failure
/// leaves the others of its batch intact.
fn in_savepoint<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.execute_batch("SAVEPOINT eda_request").map_err(backend)?;
    let result = f();
    let end = match result {
        Ok(_) => "RELEASE eda_request",
        Err(_) => "ROLLBACK TO eda_request; RELEASE eda_request",
    };
    tx.execute_batch(end).map_err(backend)?;
    result
}

/// Keeps the newer of the stored and the given snapshot.
fn save_snapshot(
    tx: &rusqlite::Transaction<'_>,
    request: &SnapshotRequest,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO eda_snapshots (aggregate_type, aggregate_id, version, snapshot_version, payload, fingerprint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
         SET version = excluded.version, snapshot_version = excluded.snapshot_version,
             payload = excluded.payload, fingerprint = excluded.fingerprint
         WHERE excluded.version >= eda_snapshots.version",
    )
    .and_then(|mut s| {
        s.execute(params![
            request.aggregate_type,
            request.aggregate_id,
            to_i64(request.snapshot.version),
            request.snapshot.snapshot_version,
            request.snapshot.payload,
            // The bits as they are: SQLite integers are signed.
            request.snapshot.fingerprint as i64,
        ])
    })
    .map(|_| ())
    .map_err(backend)
}

fn append_in_savepoint(
    tx: &rusqlite::Transaction<'_>,
    request: &AppendRequest,
    recorded_at: i64,
) -> Result<Appended, StoreError> {
    let actual: u64 = tx
        .prepare_cached(
            "SELECT version FROM eda_aggregates WHERE aggregate_type = ?1 AND aggregate_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(
                params![request.aggregate_type, request.aggregate_id],
                |row| row.get::<_, i64>(0),
            )
            .optional()
        })
        .map_err(backend)?
        .map_or(0, |v| u64::try_from(v).unwrap_or_default());
    if actual != request.expected_version {
        let stream = request.stream();
        return Err(StoreError::conflict(
            stream,
            request.expected_version,
            actual,
        ));
    }
    if request.events.is_empty() {
        keep_key(tx, request, None, recorded_at)?;
        let position: Option<i64> = tx
            .query_row(
                "SELECT MAX(position) FROM eda_events WHERE aggregate_type = ?1 AND aggregate_id = ?2",
                params![request.aggregate_type, request.aggregate_id],
                |row| row.get(0),
            )
            .map_err(backend)?;
        return Ok(Appended {
            version: actual,
            position: position.map_or(0, |p| u64::try_from(p).unwrap_or(0)),
        });
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO eda_events (event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(backend)?;
    let mut version = actual;
    let mut position = 0;
    for event in &request.events {
        version += 1;
        let inserted = insert.execute(params![
            event.event_id.as_bytes().as_slice(),
            request.aggregate_type,
            request.aggregate_id,
            to_i64(version),
            event.name.as_ref(),
            event.version,
            event.payload,
            request.metadata,
            recorded_at,
        ]);
        match inserted {
            Ok(_) => position = u64::try_from(tx.last_insert_rowid()).unwrap_or_default(),
            Err(e) if is_unique_violation(&e, "eda_events.event_id") => {
                return Err(StoreError::DuplicateEvent {
                    event_id: event.event_id,
                });
            }
            Err(e) => return Err(backend(e)),
        }
    }
    tx.prepare_cached(
        "INSERT INTO eda_aggregates (aggregate_type, aggregate_id, version) VALUES (?1, ?2, ?3)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version",
    )
    .and_then(|mut s| {
        s.execute(params![
            request.aggregate_type,
            request.aggregate_id,
            to_i64(version)
        ])
    })
    .map_err(backend)?;
    keep_key(tx, request, Some(position), recorded_at)?;
    Ok(Appended { version, position })
}

/// Stores the request's idempotency key record, if it has a key; a key stored
/// already is [`StoreError::DuplicateKey`].
fn keep_key(
    tx: &rusqlite::Transaction<'_>,
    request: &AppendRequest,
    position: Option<u64>,
    recorded_at: i64,
) -> Result<(), StoreError> {
    let Some(record) = request.idempotency_record(position) else {
        return Ok(());
    };
    let inserted = tx
        .prepare_cached(
            "INSERT INTO eda_idempotency (key, aggregate_type, aggregate_id, command, fingerprint,
                                          expected_version, version, position, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut s| {
            s.execute(params![
                record.key,
                record.aggregate_type,
                record.aggregate_id,
                record.command,
                record.fingerprint.as_ref().map(|f| f.as_bytes().as_slice()),
                to_i64(record.expected_version),
                to_i64(record.version),
                record.position.map(to_i64),
                recorded_at,
            ])
        });
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e, "eda_idempotency.key") => {
            Err(StoreError::DuplicateKey { key: record.key })
        }
        Err(e) => Err(backend(e)),
    }
}

/// Whether a failed COMMIT certainly left nothing stored.
fn commit_refused(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _)
        if matches!(e.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked))
}

fn is_unique_violation(error: &rusqlite::Error, column: &str) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, Some(message))
        if e.code == rusqlite::ErrorCode::ConstraintViolation && message.contains(column))
}

fn read_loop(connection: Connection, jobs: Arc<Mutex<mpsc::Receiver<ReaderMessage>>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(ReaderMessage::Read(job)) => job(&connection),
            Ok(ReaderMessage::Stop(done)) => {
                drop(connection);
                let _ = done.send(());
                return;
            }
            Err(_) => return,
        }
    }
}

fn backend_ref(error: &rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string().into())
}

/// The store's threads are gone: it was closed.
fn closed() -> StoreError {
    StoreError::Closed
}
