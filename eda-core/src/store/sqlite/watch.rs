//! The thread that watches the database for commits of other connections
//! (another store on the same file, another process), while runners listen:
//! SQLite's `PRAGMA data_version` changes on a connection when another
//! connection committed, and costs a few microseconds to ask: every 2 ms, and
//! every 250 µs for 50 ms after a change.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::worker::open_reader;
use super::{sql, SqliteOptions};
use crate::store::signal::{Listener, LogSignal};

/// How often the thread asks.
const PERIOD: Duration = Duration::from_millis(2);

/// How often it asks for a while after a change: commits come in bursts, and a
/// writer that commits one after the other would otherwise meet the same point
/// of the period each time (almost a whole period late).
const BUSY_PERIOD: Duration = Duration::from_micros(250);

/// How long it keeps asking that often after the last change it saw.
const BUSY_FOR: Duration = Duration::from_millis(50);

/// How long it waits before opening its connection again after that failed.
const REOPEN: Duration = Duration::from_secs(1);

/// A receiver of the positions committed to the database at `path`, with the
/// watching thread started if none runs.
pub(super) fn subscribe(
    signal: &Arc<LogSignal>,
    path: &Path,
    options: &SqliteOptions,
) -> Option<tokio::sync::watch::Receiver<u64>> {
    signal.subscribe_with(|listener| {
        let (path, options) = (path.to_path_buf(), options.clone());
        let spawned = thread::Builder::new()
            .name("eda-sqlite-watch".into())
            .spawn(move || watch(listener, &path, &options));
        if let Err(error) = spawned {
            // The listener went with the closure: the next subscriber tries again.
            tracing::warn!(%error, "could not start the thread watching the database");
        }
    })
}

/// Signals the head of the log whenever the data version moves, until nobody
/// listens or the store closes.
fn watch(mut listener: Listener, path: &Path, options: &SqliteOptions) {
    while listener.wanted() {
        match open_reader(path, options) {
            Ok(connection) => watch_on(&connection, &mut listener),
            Err(error) => {
                tracing::warn!(%error, "could not open a connection to watch the database");
                thread::sleep(REOPEN);
            }
        }
    }
}

fn watch_on(connection: &Connection, listener: &mut Listener) {
    let mut seen = None;
    let mut changed_at = Instant::now();
    while listener.wanted() {
        let version = connection
            .prepare_cached(sql::DATA_VERSION)
            .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)));
        match version {
            Ok(version) if seen != Some(version) => {
                // The first time too: commits since the runner's last read
                // cannot be told apart from older ones.
                seen = Some(version);
                changed_at = Instant::now();
                let head = connection
                    .prepare_cached(sql::HEAD)
                    .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)));
                if let Ok(head) = head {
                    listener.committed(u64::try_from(head).unwrap_or_default());
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not read the database's data version");
                return thread::sleep(REOPEN);
            }
        }
        thread::sleep(match changed_at.elapsed() < BUSY_FOR {
            true => BUSY_PERIOD,
            false => PERIOD,
        });
    }
}
