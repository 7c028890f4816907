//! The embedded default: one SQLite file in WAL mode.
//!
//! A writer thread owns the only write connection. It takes every append that is
//! waiting, runs them in one `BEGIN IMMEDIATE` transaction (each in its own
//! savepoint, so one conflict does not fail the others) and commits once: with
//! concurrent callers several commands share one fsync (group commit). Reads run on
//! their own threads and connections, so async callers never block on file I/O and
//! readers never wait for the writer. While projections or policies follow the
//! log, one more thread asks its own connection every 2 ms whether another
//! connection committed (`PRAGMA data_version`; see `watch`), so that they hear
//! of other processes' commits at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::envelope::{
    IdempotencyRecord, Metadata, NewEvent, RecordedEvent, ReplayEvent, Snapshot, StreamId,
};
use crate::error::StoreError;
use crate::projection::ParkedEvent;
use crate::store::durable::{backend, AppendRequest};
use crate::store::internal::Internal;
use crate::store::signal::LogSignal;
use crate::store::{
    check_checkpoint_name, check_names, check_parked, Appended, EventStore, LogCount, LogPage,
};

mod batch;
mod file;
mod migrate;
mod options;
mod pace;
mod read;
mod row;
mod sql;
mod watch;
mod worker;

pub use options::{SqliteOptions, SqliteSynchronous};

use batch::{CheckpointRequest, ParkRequest, SnapshotRequest, UnparkRequest, WriteRequest};
use pace::{reply_of, InFlight, Pace};
use worker::{
    open_reader, open_writer, read_loop, spawn_connected, write_loop, ReadJob, ReaderMessage,
    WriterJob,
};

/// An [`EventStore`] in one SQLite file (feature `sqlite`, on by default).
///
/// Seven tables, created and migrated when the store opens: `eda_events`
/// (position, event id, aggregate type and id, version, event name and schema
/// version, payload and metadata as JSON text, recorded-at in microseconds),
/// `eda_aggregates` (aggregate type, id, current version), `eda_snapshots` (the
/// latest snapshot per aggregate), `eda_idempotency` (each idempotency key and
/// what its command stored), `eda_checkpoints` (runners' checkpoints, by name),
/// `eda_parked_events` (the events runners parked, by name and position) and
/// `eda_schema` (the schema version; a database written by a newer eda is
/// refused, never downgraded).
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
    /// The positions committed, for runners: the writer's commits, and other
    /// connections' seen by the thread watching the file while runners listen.
    signal: Arc<LogSignal>,
    /// The options the store was opened with (for the watching thread's connection).
    options: SqliteOptions,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

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
        let pace = Arc::new(Pace::new(options.poll_for_reply));
        let writer_pace = Arc::clone(&pace);
        let signal = Arc::new(LogSignal::default());
        let writer_signal = Arc::clone(&signal);
        let (writer_path, writer_options) = (path.clone(), options.clone());
        let max_batch = options.max_batch;
        spawn_connected(
            "eda-sqlite-writer".into(),
            move || open_writer(&writer_path, &writer_options),
            move |(connection, file)| {
                write_loop(
                    connection,
                    file,
                    requests,
                    max_batch,
                    &writer_pace,
                    &writer_signal,
                )
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
                signal,
                options,
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
        // Every connection closes before the writer's, which then removes the WAL.
        self.inner.signal.close().await;
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
                .execute(sql::BACKUP, params![target])
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

    fn watch_log(&self, _: Internal) -> Option<tokio::sync::watch::Receiver<u64>> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return None;
        }
        watch::subscribe(&self.inner.signal, &self.inner.path, &self.inner.options)
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
            read::snapshot(connection, &aggregate_type, &aggregate_id)
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
            let snapshot = read::snapshot(connection, &aggregate_type, &aggregate_id)?;
            // From the snapshot's own event on, so a snapshot ahead of the stream shows.
            let after = snapshot.as_ref().map_or(0, |s| s.version.saturating_sub(1));
            let tail = read::replay(connection, &aggregate_type, &aggregate_id, after, limit)?;
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
            read::replay(
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
            read::stream(connection, &aggregate_type, &aggregate_id, after_version)
        })
        .await
    }

    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(false, move |connection| {
            read::all(connection, after_position, limit)
        })
        .await
    }

    async fn read_all_of(
        &self,
        after_position: u64,
        limit: usize,
        names: &[&str],
    ) -> Result<LogPage, StoreError> {
        let names: Vec<String> = names.iter().map(|&name| name.to_owned()).collect();
        self.read(false, move |connection| {
            read::all_of(connection, after_position, limit, &names)
        })
        .await
    }

    async fn count_all_of(
        &self,
        after_position: u64,
        names: &[&str],
    ) -> Result<Option<LogCount>, StoreError> {
        let names: Vec<String> = names.iter().map(|&name| name.to_owned()).collect();
        self.read(false, move |connection| {
            read::count_all_of(connection, after_position, &names).map(Some)
        })
        .await
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_owned();
        self.read(true, move |connection| {
            read::idempotency_key(connection, key)
        })
        .await
    }

    async fn read_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        check_checkpoint_name(name)?;
        let name = name.to_owned();
        self.read(false, move |connection| read::checkpoint(connection, &name))
            .await
    }

    async fn write_checkpoint(
        &self,
        name: &str,
        from: Option<u64>,
        to: u64,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        check_checkpoint_name(name)?;
        let (reply, rx) = oneshot::channel();
        let request = CheckpointRequest {
            name: name.to_owned(),
            from,
            to,
            reply,
        };
        self.inner
            .writer
            .send(WriterJob::Write(WriteRequest::Checkpoint(request)))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        self.check_open()?;
        check_parked(name, event)?;
        let (reply, rx) = oneshot::channel();
        let request = ParkRequest {
            runner: name.to_owned(),
            event: event.clone(),
            reply,
        };
        self.inner
            .writer
            .send(WriterJob::Write(WriteRequest::Park(request)))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        check_checkpoint_name(name)?;
        let name = name.to_owned();
        self.read(false, move |connection| read::parked(connection, &name))
            .await
    }

    async fn unpark(&self, name: &str, position: u64) -> Result<bool, StoreError> {
        self.check_open()?;
        check_checkpoint_name(name)?;
        let (reply, rx) = oneshot::channel();
        let request = UnparkRequest {
            runner: name.to_owned(),
            position,
            reply,
        };
        self.inner
            .writer
            .send(WriterJob::Write(WriteRequest::Unpark(request)))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.read(true, move |connection| read::event(connection, event_id))
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

/// The store's threads are gone: it was closed.
fn closed() -> StoreError {
    StoreError::Closed
}
