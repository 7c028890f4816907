//! The kinds of read model a [`Projection`](super::Projection) can be, named by
//! its [`Kind`](super::Projection::Kind). `#[projection]` picks the kind from the
//! `#[on]` methods' signatures; mixing kinds in one projection is a compile error.

mod sealed {
    pub trait Sealed {}
}

/// A kind of read model: [`Memory`], [`Sqlite`] or [`Postgres`].
pub trait Kind: sealed::Sealed + Send + 'static {}

/// The state is the projection value, in memory: [`MemoryProjection`](super::MemoryProjection).
#[derive(Debug, Clone, Copy)]
pub enum Memory {}

/// The state is in a SQLite database, written in the runner's transaction:
/// [`SqliteProjection`](super::SqliteProjection).
#[derive(Debug, Clone, Copy)]
pub enum Sqlite {}

/// The state is in a PostgreSQL database, written in the runner's transaction
/// by async `#[on]` methods: `PostgresProjection` (feature `postgres`).
#[derive(Debug, Clone, Copy)]
pub enum Postgres {}

/// A kind of read model kept in a database, [`Sqlite`] or [`Postgres`]: its
/// projection's `#[reset]` method empties it, to be rebuilt from the log
/// ([`ProjectionHandle::rebuild`](super::ProjectionHandle::rebuild)). An
/// in-memory projection is rebuilt by every start instead.
pub trait InDatabase: Kind {}

impl sealed::Sealed for Memory {}
impl Kind for Memory {}
impl sealed::Sealed for Sqlite {}
impl Kind for Sqlite {}
impl InDatabase for Sqlite {}
impl sealed::Sealed for Postgres {}
impl Kind for Postgres {}
impl InDatabase for Postgres {}
