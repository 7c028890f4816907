//! The store's settings: [`PostgresOptions`].

use std::time::Duration;

/// Settings of a [`PostgresStore`](super::PostgresStore).
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresOptions {
    pub(super) schema: String,
    pub(super) pool_size: usize,
    pub(super) max_batch: usize,
    pub(super) batch_lock_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "public".into(),
            pool_size: 16,
            max_batch: 64,
            batch_lock_timeout: Duration::from_millis(100),
        }
    }
}

impl PostgresOptions {
    /// Default settings: schema `public`, 16 pooled connections, batches of up to
    /// 64 appends.
    pub fn new() -> Self {
        Self::default()
    }

    /// The PostgreSQL schema that holds eda's tables (created if missing): lowercase
    /// letters, digits and `_`, starting with a letter or `_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the pool opens. Default: 16.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// The most appends one statement commits together. Default: 64; 1 sends each
    /// append on its own.
    ///
    /// Appends from concurrent callers queue for a few committing tasks (one per 8
    /// pooled connections, at least one); each takes every append waiting and
    /// commits them in one statement and one transaction, where each append still
    /// succeeds or conflicts on its own. The only append in flight (a sequential
    /// caller's) is sent from its caller's task, without waiting for another.
    /// An append whose event id is stored already fails the shared statement; its
    /// batch is then committed append by append.
    pub fn max_batch(mut self, appends: usize) -> Self {
        self.max_batch = appends.max(1);
        self
    }

    /// How long a batch of appends waits for a row lock held by another
    /// connection (PostgreSQL's `lock_timeout` on the committing connections)
    /// before it gives up and each of its appends is sent on its own. Default:
    /// 100 ms. Without a bound, one aggregate locked by a long transaction
    /// elsewhere (an [`PostgresStore::append_in`](super::PostgresStore::append_in)
    /// that takes its time) would stall every append batched with it; this way
    /// only the append to that aggregate waits, as it would have on its own.
    pub fn batch_lock_timeout(mut self, timeout: Duration) -> Self {
        self.batch_lock_timeout = timeout.max(Duration::from_millis(1));
        self
    }
}
