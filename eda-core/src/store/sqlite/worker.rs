//! The store's threads: the writer, which owns the only write connection and
//! commits what it is sent in batches, and the readers, each with its own connection.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::batch::{reply, write_batch, WriteRequest};
use super::file::DatabaseFile;
use super::migrate::migrate;
use super::pace::Pace;
use super::{closed, sql, SqliteOptions, SqliteSynchronous};
use crate::error::StoreError;
use crate::store::durable::backend;
use crate::store::signal::LogSignal;

/// What the writer thread is sent.
pub(super) enum WriterJob {
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

/// What a reader thread is sent.
pub(super) enum ReaderMessage {
    Read(ReadJob),
    /// Close the connection and end the thread, then say so.
    Stop(oneshot::Sender<()>),
}

pub(super) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Starts a thread that opens its own connection (so the caller never waits on
/// file I/O), reports whether that worked, then runs `run` with it.
pub(super) async fn spawn_connected<C: Send + 'static>(
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
    let pragmas = match options.synchronous {
        SqliteSynchronous::Full => sql::WAL_SYNCHRONOUS_FULL,
        SqliteSynchronous::Normal => sql::WAL_SYNCHRONOUS_NORMAL,
    };
    connection.execute_batch(pragmas).map_err(backend)?;
    Ok(connection)
}

pub(super) fn open_writer(
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

pub(super) fn open_reader(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    open_connection(path, flags, options)
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

pub(super) fn write_loop(
    mut connection: Connection,
    mut file: DatabaseFile,
    requests: mpsc::Receiver<WriterJob>,
    max_batch: usize,
    pace: &Pace,
    signal: &LogSignal,
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
                if let Some(head) = write_batch(&mut connection, batch) {
                    signal.committed(head);
                }
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
        .query_row(sql::CHECKPOINT, [], |row| row.get::<_, i64>(0))
        .map_err(backend);
    let closed = connection.close().map_err(|(_, e)| backend(e));
    match checkpoint? {
        0 => closed,
        _ => Err(StoreError::CheckpointBlocked),
    }
}

pub(super) fn read_loop(connection: Connection, jobs: Arc<Mutex<mpsc::Receiver<ReaderMessage>>>) {
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
