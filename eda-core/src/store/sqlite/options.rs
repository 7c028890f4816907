//! The store's settings: [`SqliteOptions`] and the durability of an acknowledged
//! append, [`SqliteSynchronous`].

use std::time::Duration;

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

/// Settings of a [`SqliteStore`](super::SqliteStore); `SqliteOptions::default()` is what
/// [`SqliteStore::open`](super::SqliteStore::open) uses.
#[derive(Debug, Clone)]
#[must_use]
pub struct SqliteOptions {
    pub(super) synchronous: SqliteSynchronous,
    pub(super) busy_timeout: Duration,
    pub(super) readers: usize,
    pub(super) max_batch: usize,
    pub(super) poll_for_reply: Duration,
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
    /// The caller polls only when its request is the only one in flight (and, for
    /// an append, when the writer's last transaction took no longer than this);
    /// concurrent callers (group commit) always sleep. While it polls, the
    /// caller's thread stays busy, yielding its CPU to any thread that wants it.
    /// A poller that finds it lost its CPU for half a millisecond (another busy
    /// thread, or a busy runtime) stops, and callers then sleep for the next 50 ms:
    /// on a busy machine polling would only take CPU time from the writer. Why
    /// polling pays, measured: the README's performance section.
    pub fn poll_for_reply(mut self, window: Duration) -> Self {
        self.poll_for_reply = window;
        self
    }
}
