//! The PostgreSQL kind: the read model is in a PostgreSQL schema (of the event
//! store's database or another one), and each page of events is applied in one
//! transaction that also moves the projection's checkpoint, kept in that
//! schema's `eda_projections` table (the algorithm is `page`'s, as SQLite's).
//!
//! One runner at a time, across processes: a runner applies pages only while
//! it holds a session-level advisory lock on its connection, keyed by the
//! schema and the projection's name. Another runner stands by and tries to take
//! the lock every second; the lock goes with its holder's connection, so the
//! holder stopping, crashing or losing its connection hands over within
//! seconds. The checkpoint's compare-and-set still refuses a page from a runner
//! that lost its turn.
//!
//! Each runner keeps its connection on a thread of its own, with a
//! single-threaded tokio runtime that drives it: the `#[on]` methods borrow the
//! projection value across their awaits, and [`ProjectionHandle::read`] waits
//! for that value without depending on the caller's runtime to make progress
//! (a current-thread runtime blocked in `read` would otherwise never let the
//! method finish).

pub(crate) mod batch;

pub use batch::{BoxedParams, PostgresBatch, PostgresParams};

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls, Statement, Transaction};
use tracing::Instrument;
use uuid::Uuid;

use super::page::{self, to_i64, Database, ReadDb, Stream};
use super::runner::{self, Control, Failure, Sink, Started, Then};
use super::{
    lock, read_model, ApplyError, ParkedEvent, Parking, PostgresProjection, ProjectionBuilder,
    ProjectionHandle, Retried,
};
use crate::app::App;
use crate::envelope::RecordedEvent;
use crate::error::StoreError;
use crate::failpoint;
use crate::store::durable::backend;
use crate::store::{BoxFuture, LogPage};

/// The tables, created if missing: the checkpoint and version of each
/// projection, and the events they parked.
fn create(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.eda_projections (
             name text PRIMARY KEY,
             version bigint NOT NULL,
             position bigint NOT NULL
         );
         CREATE TABLE IF NOT EXISTS {schema}.eda_parked (
             projection text NOT NULL,
             position bigint NOT NULL,
             event_id uuid NOT NULL,
             aggregate_type text NOT NULL,
             aggregate_id text NOT NULL,
             name text NOT NULL,
             error text NOT NULL,
             parked_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (projection, position)
         )"
    )
}

/// Concurrent runners create the tables one at a time (`IF NOT EXISTS` alone
/// races in the catalog).
const CREATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('eda.projections'))";
const INSERT: &str = "INSERT INTO eda_projections (name, version, position) VALUES ($1, $2, 0)
    ON CONFLICT (name) DO NOTHING";
const SELECT: &str = "SELECT version, position FROM eda_projections WHERE name = $1";
/// The same, locked until the transaction ends.
const SELECT_FOR_UPDATE: &str =
    "SELECT version, position FROM eda_projections WHERE name = $1 FOR UPDATE";
/// A rebuild's start: the new version, the checkpoint back to 0.
const RESTART: &str = "UPDATE eda_projections SET version = $2, position = 0 WHERE name = $1";
const UNPARK_ALL: &str = "DELETE FROM eda_parked WHERE projection = $1";
/// Where to start a projection instead of a schema built by another version.
const FRESH: &str = "in a new schema";
/// The compare-and-set that moves a checkpoint: no row changes if another
/// runner of the same projection moved it first.
const MOVE: &str = "UPDATE eda_projections SET position = $3 WHERE name = $1 AND position = $2";
const PARK: &str = "INSERT INTO eda_parked
    (projection, position, event_id, aggregate_type, aggregate_id, name, error)
    VALUES ($1, $2, $3, $4, $5, $6, $7)";
const PARKED: &str =
    "SELECT position, event_id, aggregate_type, aggregate_id, name, error, parked_at
    FROM eda_parked WHERE projection = $1 ORDER BY position";
const PARKED_STREAMS: &str = "SELECT aggregate_type, aggregate_id, count(*)
    FROM eda_parked WHERE projection = $1 GROUP BY aggregate_type, aggregate_id";
const UNPARK: &str = "DELETE FROM eda_parked WHERE projection = $1 AND position = $2";
const UNPARK_ID: &str = "DELETE FROM eda_parked WHERE projection = $1 AND event_id = $2";
const STILL_FAILS: &str =
    "UPDATE eda_parked SET error = $3 WHERE projection = $1 AND position = $2";
/// The runner's turn: a session-level advisory lock, held until it is
/// released or the connection closes. Runners of one projection in one schema
/// share the key (`$1` names both).
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";

/// A PostgreSQL projection with its database, about to be started:
/// [`ProjectionBuilder::postgres`].
#[must_use = "a projection does nothing until it is started"]
pub struct PostgresProjectionBuilder<P> {
    app: App,
    projection: P,
    url: String,
    schema: String,
}

impl<P: fmt::Debug> fmt::Debug for PostgresProjectionBuilder<P> {
    // Not the URL: it may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresProjectionBuilder")
            .field("projection", &self.projection)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl<P: PostgresProjection> ProjectionBuilder<P, read_model::Postgres> {
    /// The PostgreSQL database the read model lives in, by URL
    /// (`postgres://user@host:port/database`, as
    /// [`PostgresStore::connect`](crate::PostgresStore::connect) takes): the
    /// event store's or another one. The runner opens one connection of its
    /// own, which holds its turn (see [`RunnerState::Standby`](crate::RunnerState::Standby));
    /// the `#[on]` methods write through its transactions, with the
    /// [`schema`](PostgresProjectionBuilder::schema) first on the search path.
    /// Queries of the read model use connections of their own.
    pub fn postgres(self, url: impl Into<String>) -> PostgresProjectionBuilder<P> {
        PostgresProjectionBuilder {
            app: self.app,
            projection: self.projection,
            url: url.into(),
            schema: "public".into(),
        }
    }
}

impl<P: PostgresProjection> PostgresProjectionBuilder<P> {
    /// The schema (created if missing) that holds the runner's tables,
    /// `eda_projections` and `eda_parked`, and is the search path of the `#[on]`
    /// methods' transactions: lowercase letters, digits and `_`, starting with a
    /// letter or `_`. Default: `public`. Runners of one projection in one schema
    /// take turns; in two schemas they are two read models.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Connects, finds the projection's checkpoint (creating the schema and
    /// tables on first use), and starts the runner on a task of its own after
    /// it, with its connection on a thread of its own. The runner applies
    /// events once it has its turn; until then its state is
    /// [`RunnerState::Standby`](crate::RunnerState::Standby).
    ///
    /// A read model built by an older [`VERSION`](crate::Projection::VERSION)
    /// of a projection with a `#[reset]` method is rebuilt: the runner that
    /// takes the turn first empties it, its parked events and its checkpoint
    /// in one transaction, then replays the log into it
    /// ([`RunnerState::Rebuilding`](crate::RunnerState::Rebuilding)).
    ///
    /// # Errors
    /// The URL or the schema name is not valid, the database cannot be reached,
    /// or it holds the read model of a newer version of the projection, or of
    /// an older one and the projection has no `#[reset]` method
    /// ([`StoreError::Invalid`], `what: "projection version"`).
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub async fn start(self) -> Result<ProjectionHandle<P>, StoreError> {
        let config = crate::store::postgres::config(&self.url, &self.schema)?;
        let state = Arc::new(Mutex::new(self.projection));
        let parked = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            config,
            lock_key: format!("eda.projection {}.{}", self.schema, P::NAME),
            schema: self.schema,
            db: None,
            locked: false,
            state: Arc::clone(&state),
            parked: Arc::clone(&parked),
        };
        let requests = worker.spawn().await?;
        let sink = PostgresSink {
            requests: requests.clone(),
            parked: Arc::clone(&parked),
            projection: PhantomData::<fn() -> P>,
        };
        let control = runner::spawn(self.app.clone(), sink);
        let parking = PostgresParking {
            app: self.app,
            requests,
            parked,
            control: Arc::clone(&control),
        };
        Ok(ProjectionHandle {
            control,
            state,
            parking: Some(Arc::new(parking)),
        })
    }
}

/// What a PostgreSQL read model's `#[on]` methods take as their transaction:
/// `&eda::tokio_postgres::Transaction<'_>`, or `&eda::PostgresBatch<'_>` to
/// queue statements that the runner sends pipelined. `#[projection]` types the
/// method's argument through it, so that another transaction (a SQLite one, in
/// an async method) is reported with what to take instead.
#[diagnostic::on_unimplemented(
    message = "an async #[on] method writes to a PostgreSQL read model: it takes `&eda::tokio_postgres::Transaction<'_>` or `&eda::PostgresBatch<'_>`, not `&{Self}`",
    label = "not a PostgreSQL transaction",
    note = "the #[on] methods of a SQLite read model are not async"
)]
pub trait PostgresTransaction<'t> {
    /// Whether the statements queued before are to be sent, and done, before
    /// the method runs: for the transaction itself, so that the method reads
    /// what the events before it wrote.
    const FLUSHES: bool;

    /// The page's transaction as the method's argument.
    fn of<'a>(batch: &'a PostgresBatch<'t>) -> &'a Self;
}

// Not offered as the fix: the message says what to take.
#[diagnostic::do_not_recommend]
impl<'t> PostgresTransaction<'t> for Transaction<'t> {
    const FLUSHES: bool = true;

    fn of<'a>(batch: &'a PostgresBatch<'t>) -> &'a Self {
        batch.raw()
    }
}

#[diagnostic::do_not_recommend]
impl<'t> PostgresTransaction<'t> for PostgresBatch<'t> {
    const FLUSHES: bool = false;

    fn of<'a>(batch: &'a PostgresBatch<'t>) -> &'a Self {
        batch
    }
}

/// What the runner and the handle ask of the worker thread.
enum Request {
    Start(oneshot::Sender<Result<Started, Failure>>),
    Rebuild(oneshot::Sender<Result<(), StoreError>>),
    Apply {
        page: LogPage,
        last_attempt: bool,
        span: tracing::Span,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    List(oneshot::Sender<Result<Vec<ParkedEvent>, StoreError>>),
    Retry {
        events: Vec<RecordedEvent>,
        reply: oneshot::Sender<Result<Retried, StoreError>>,
    },
    Skip {
        event_id: Uuid,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// The runner ended: close the connection, and with it the turn.
    Release,
}

/// Sends a request to the worker thread and waits for its answer; `None` if
/// the thread is gone (an `#[on]` method panicked on it).
async fn ask<T>(
    requests: &mpsc::UnboundedSender<Request>,
    request: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    requests.send(request(reply)).ok()?;
    answer.await.ok()
}

const ENDED: &str = "the runner's thread ended: an #[on] method panicked";

/// The thread that owns a runner's connection and applies its pages.
struct Worker<P> {
    config: tokio_postgres::Config,
    schema: String,
    lock_key: String,
    /// The connection, once open (closed again when the runner ends).
    db: Option<ReadDb<PgConnection>>,
    /// Whether this connection holds the projection's turn.
    locked: bool,
    state: Arc<Mutex<P>>,
    parked: Arc<AtomicU64>,
}

impl<P: PostgresProjection> Worker<P> {
    /// Starts the thread, which connects and reads the checkpoint first: its
    /// requests' sender, or why that failed.
    async fn spawn(self) -> Result<mpsc::UnboundedSender<Request>, StoreError> {
        let (requests, receiver) = mpsc::unbounded_channel();
        let (opened, open) = oneshot::channel();
        let name = format!("eda-projection-{}", P::NAME);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(self.run(opened, receiver)),
                    Err(error) => drop(opened.send(Err(backend(error)))),
                }
            })
            .map_err(backend)?;
        open.await
            .map_err(|_| StoreError::Backend(ENDED.into()))??;
        Ok(requests)
    }

    async fn run(
        mut self,
        opened: oneshot::Sender<Result<(), StoreError>>,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) {
        let open = self.connected().await.map(drop);
        let failed = open.is_err();
        // The runner's start may take a while (standby): the count now.
        self.count();
        if opened.send(open).is_err() || failed {
            return;
        }
        while let Some(request) = requests.recv().await {
            match request {
                Request::Start(reply) => drop(reply.send(self.start().await)),
                Request::Rebuild(reply) => drop(reply.send(self.rebuild().await)),
                Request::Apply {
                    page,
                    last_attempt,
                    span,
                    reply,
                } => {
                    let applied = self.apply(page, last_attempt).instrument(span).await;
                    drop(reply.send(applied));
                }
                Request::List(reply) => drop(reply.send(self.list().await)),
                Request::Retry { events, reply } => drop(reply.send(self.retry(&events).await)),
                Request::Skip { event_id, reply } => drop(reply.send(self.skip(event_id).await)),
                Request::Release => self.disconnect(),
            }
        }
    }

    fn count(&self) {
        if let Some(db) = &self.db {
            self.parked.store(db.parked_total(), Ordering::Relaxed);
        }
    }

    /// Closes the connection, which releases the turn if it held it.
    fn disconnect(&mut self) {
        self.db = None;
        self.locked = false;
    }

    /// The open connection; a new one (with the tables, the checkpoint row and
    /// the parked aggregates read) if there is none or it closed.
    async fn connected(&mut self) -> Result<&mut ReadDb<PgConnection>, StoreError> {
        if self
            .db
            .as_ref()
            .is_some_and(|db| db.connection.client.is_closed())
        {
            self.disconnect();
        }
        let db = match self.db.take() {
            Some(db) => db,
            None => self.connect().await?,
        };
        Ok(self.db.insert(db))
    }

    async fn connect(&self) -> Result<ReadDb<PgConnection>, StoreError> {
        let (mut client, connection) = self.config.connect(NoTls).await.map_err(backend)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(projection = P::NAME, %error, "read model connection closed");
            }
        });
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute(CREATE_LOCK, &[]).await.map_err(backend)?;
        tx.batch_execute(&create(&self.schema))
            .await
            .map_err(backend)?;
        let version = i64::from(P::VERSION);
        tx.execute(INSERT, &[&P::NAME, &version])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let checkpoint = Self::checkpoint(&self.schema, &client).await?;
        let place = format!("schema `{}`", self.schema);
        let statements = Statements {
            park: client.prepare(PARK).await.map_err(backend)?,
            move_checkpoint: client.prepare(MOVE).await.map_err(backend)?,
            unpark: client.prepare(UNPARK).await.map_err(backend)?,
        };
        let connection = PgConnection {
            client,
            statements,
            prepared: batch::Prepared::new(),
        };
        ReadDb::new::<P>(connection, P::NAME, place, checkpoint).await
    }

    /// The stored checkpoint, unless the stored version is refused (a read
    /// model that is to be rebuilt is, once the runner has its turn).
    async fn checkpoint(schema: &str, client: &Client) -> Result<u64, StoreError> {
        let row = client.query_opt(SELECT, &[&P::NAME]).await;
        let row = row
            .map_err(backend)?
            .ok_or_else(|| StoreError::Backend("the checkpoint row vanished".into()))?;
        let (stored, position): (i64, i64) = (row.get(0), row.get(1));
        let place = format!("schema `{schema}`");
        page::to_rebuild(P::NAME, &place, stored, P::VERSION, P::RESETS, FRESH)?;
        page::checkpoint_of(P::NAME, position)
    }

    /// Takes the turn, or says to stand by; then reads the checkpoint and the
    /// park again (the runner before may have moved them), and empties a read
    /// model that an older version built.
    async fn start(&mut self) -> Result<Started, Failure> {
        let started = self.take_turn().await.map_err(|error| match error {
            error @ StoreError::Invalid { .. } => Failure::stop(error, None),
            error => Failure::retry(error, None),
        })?;
        self.count();
        match started {
            Some(started) => Ok(started),
            None => Err(Failure::standby(format!(
                "another runner of `{}` has its turn (it holds its lock)",
                P::NAME
            ))),
        }
    }

    // See `apply`.
    #[allow(clippy::await_holding_lock)]
    async fn take_turn(&mut self) -> Result<Option<Started>, StoreError> {
        let locked = self.locked;
        let key = self.lock_key.clone();
        let db = self.connected().await?;
        if !locked {
            let row = db.connection.client.query_one(TRY_LOCK, &[&key]).await;
            // The control of the one-runner-at-a-time tests: every runner
            // takes its turn.
            let locked = row.map_err(backend)?.get::<_, bool>(0);
            if !locked && !failpoint::broken("runner.turn_ignored") {
                return Ok(None);
            }
        }
        self.locked = true;
        let db = self.db.as_mut().expect("connected");
        let mut state = lock(&self.state);
        let started = page::start(db, &mut *state, P::VERSION, FRESH).await?;
        Ok(Some(started))
    }

    /// Empties the read model for the runner to rebuild it, if this runner
    /// has the turn.
    // See `apply`.
    #[allow(clippy::await_holding_lock)]
    async fn rebuild(&mut self) -> Result<(), StoreError> {
        let Some(db) = self.db.as_mut().filter(|_| self.locked) else {
            return Err(StoreError::Invalid {
                what: "rebuild",
                reason: format!("this runner of `{}` does not have its turn", P::NAME),
            });
        };
        let rebuilt = {
            let mut state = lock(&self.state);
            page::rebuild(db, &mut *state, P::VERSION).await
        };
        self.count();
        rebuilt
    }

    // The projection value is locked across the page's awaits on purpose: this
    // thread's own runtime drives them, so `ProjectionHandle::read` waits for
    // the page, never for the caller's runtime.
    #[allow(clippy::await_holding_lock)]
    async fn apply(&mut self, page: LogPage, last_attempt: bool) -> Result<(), Failure> {
        let Some(db) = self.db.as_mut().filter(|_| self.locked) else {
            return Err(Failure::standby("it does not have its turn"));
        };
        let applied = {
            let mut state = lock(&self.state);
            page::apply_page(db, &mut *state, &page, last_attempt).await
        };
        self.parked.store(db.parked_total(), Ordering::Relaxed);
        if !db.connection.client.is_closed() {
            return applied;
        }
        // The connection closed, and the turn with it: what the page did was
        // committed with its checkpoint or not at all, but a commit cut short
        // may have happened. Stand by until this runner has the turn again and
        // has read the checkpoint.
        self.disconnect();
        applied.map_err(|mut failure| {
            failure.then = Then::Standby;
            failure.error = format!("the connection closed: {}", failure.error);
            failure
        })
    }

    async fn list(&mut self) -> Result<Vec<ParkedEvent>, StoreError> {
        let db = self.connected().await?;
        let rows = db.connection.client.query(PARKED, &[&db.name]).await;
        let rows = rows.map_err(backend)?;
        Ok(rows
            .iter()
            .map(|row| ParkedEvent {
                position: u64::try_from(row.get::<_, i64>(0)).unwrap_or_default(),
                event_id: row.get(1),
                aggregate_type: row.get(2),
                aggregate_id: row.get(3),
                name: row.get(4),
                error: row.get(5),
                parked_at: row.get(6),
            })
            .collect())
    }

    // See `apply`.
    #[allow(clippy::await_holding_lock)]
    async fn retry(&mut self, events: &[RecordedEvent]) -> Result<Retried, StoreError> {
        let state = Arc::clone(&self.state);
        let db = self.connected().await?;
        let retried = page::retry_parked(db, &mut *lock(&state), events).await;
        self.count();
        retried
    }

    async fn skip(&mut self, event_id: Uuid) -> Result<bool, StoreError> {
        let db = self.connected().await?;
        let client = &db.connection.client;
        let deleted = client.execute(UNPARK_ID, &[&db.name, &event_id]).await;
        db.count_parked::<P>().await?;
        self.count();
        Ok(deleted.map_err(backend)? > 0)
    }
}

/// The statements of every page, prepared once per connection.
struct Statements {
    park: Statement,
    move_checkpoint: Statement,
    unpark: Statement,
}

/// The runner's connection.
struct PgConnection {
    client: Client,
    statements: Statements,
    /// What the `#[on]` methods queued, prepared.
    prepared: batch::Prepared,
}

/// A page's transaction, with the connection's statements.
struct PgTx<'c> {
    batch: PostgresBatch<'c>,
    statements: &'c Statements,
}

/// The read model's side of the page algorithm.
impl<P: PostgresProjection> Database<P> for PgConnection {
    const LOST_TURN: Then = Then::Standby;
    const RESETS: bool = P::RESETS;

    type Tx<'c> = PgTx<'c>;

    async fn begin(&mut self) -> Result<PgTx<'_>, StoreError> {
        let PgConnection {
            client,
            statements,
            prepared,
        } = self;
        let tx = client.transaction().await.map_err(backend)?;
        let batch = PostgresBatch::new(tx, prepared);
        Ok(PgTx { batch, statements })
    }

    async fn commit(tx: Self::Tx<'_>) -> Result<(), StoreError> {
        // What is still queued, first: COMMIT in a transaction that a queued
        // statement aborted would roll it back without an error.
        if let Err((_, error)) = tx.batch.finish().await {
            return Err(StoreError::Backend(Box::new(error)));
        }
        tx.batch.into_transaction().commit().await.map_err(backend)
    }

    async fn apply(
        tx: &Self::Tx<'_>,
        projection: &mut P,
        event: &RecordedEvent,
        index: usize,
    ) -> Result<(), (usize, ApplyError)> {
        tx.batch.set_event(index);
        match projection.apply(event, &tx.batch).await {
            Ok(()) => Ok(()),
            // A statement queued for an earlier event failed first: the
            // method's own failure may only be the aborted transaction's.
            Err(error) => Err(tx.batch.take_failure().unwrap_or((index, error))),
        }
    }

    async fn flush(tx: &Self::Tx<'_>) -> Result<(), (usize, ApplyError)> {
        tx.batch.finish().await
    }

    async fn stored(tx: &Self::Tx<'_>, name: &str) -> Result<(i64, i64), StoreError> {
        let row = tx.batch.raw().query_opt(SELECT_FOR_UPDATE, &[&name]).await;
        let row = row
            .map_err(backend)?
            .ok_or_else(|| StoreError::Backend("the checkpoint row vanished".into()))?;
        Ok((row.get(0), row.get(1)))
    }

    async fn reset(
        tx: &Self::Tx<'_>,
        projection: &mut P,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        projection.reset(&tx.batch).await
    }

    async fn restart(tx: &Self::Tx<'_>, name: &str, version: u32) -> Result<(), StoreError> {
        tx.batch
            .raw()
            .execute(UNPARK_ALL, &[&name])
            .await
            .map_err(backend)?;
        let version = i64::from(version);
        let restarted = tx.batch.raw().execute(RESTART, &[&name, &version]).await;
        restarted.map(drop).map_err(backend)
    }

    async fn park(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &name,
            &to_i64(event.position),
            &event.event_id,
            &event.aggregate_type,
            &event.aggregate_id,
            &event.name,
            &error,
        ];
        let parked = tx.batch.raw().execute(&tx.statements.park, &params).await;
        parked.map(drop).map_err(backend)
    }

    async fn move_checkpoint(
        tx: &Self::Tx<'_>,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<bool, StoreError> {
        let statement = &tx.statements.move_checkpoint;
        let moved = tx
            .batch
            .raw()
            .execute(statement, &[&name, &to_i64(from), &to_i64(to)])
            .await;
        Ok(moved.map_err(backend)? == 1)
    }

    async fn unpark(tx: &Self::Tx<'_>, name: &str, position: u64) -> Result<bool, StoreError> {
        let statement = &tx.statements.unpark;
        let deleted = tx
            .batch
            .raw()
            .execute(statement, &[&name, &to_i64(position)])
            .await;
        Ok(deleted.map_err(backend)? == 1)
    }

    async fn still_fails(
        &mut self,
        name: &str,
        position: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&name, &to_i64(position), &error];
        let updated = self.client.execute(STILL_FAILS, &params).await;
        updated.map(drop).map_err(backend)
    }

    async fn parked_streams(&mut self, name: &str) -> Result<HashMap<Stream, u64>, StoreError> {
        let rows = self.client.query(PARKED_STREAMS, &[&name]).await;
        let rows = rows.map_err(backend)?;
        Ok(rows
            .iter()
            .map(|row| {
                let count = u64::try_from(row.get::<_, i64>(2)).unwrap_or_default();
                ((row.get(0), row.get(1)), count)
            })
            .collect())
    }
}

/// The runner's side: asks the worker thread.
struct PostgresSink<P> {
    requests: mpsc::UnboundedSender<Request>,
    parked: Arc<AtomicU64>,
    projection: PhantomData<fn() -> P>,
}

impl<P: PostgresProjection> Sink for PostgresSink<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn events(&self) -> &'static [&'static str] {
        P::EVENTS
    }

    async fn start(&mut self) -> Result<Started, Failure> {
        ask(&self.requests, Request::Start)
            .await
            .unwrap_or_else(|| Err(Failure::stop(ENDED, None)))
    }

    async fn rebuild(&mut self) -> Result<(), StoreError> {
        ask(&self.requests, Request::Rebuild)
            .await
            .unwrap_or_else(|| Err(StoreError::Backend(ENDED.into())))
    }

    async fn apply(&mut self, page: LogPage, last_attempt: bool) -> Result<(), Failure> {
        let span = tracing::Span::current();
        let request = |reply| Request::Apply {
            page,
            last_attempt,
            span,
            reply,
        };
        ask(&self.requests, request)
            .await
            .unwrap_or_else(|| Err(Failure::stop(ENDED, None)))
    }

    fn parked(&self) -> Option<u64> {
        Some(self.parked.load(Ordering::Relaxed))
    }
}

impl<P> Drop for PostgresSink<P> {
    /// The runner ended: its turn goes to the next runner. (The handle may still
    /// list, retry and skip parked events, on a connection without the turn.)
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Release);
    }
}

/// The dead-letter operations of a PostgreSQL projection's handle, on the
/// worker thread.
struct PostgresParking {
    app: App,
    requests: mpsc::UnboundedSender<Request>,
    parked: Arc<AtomicU64>,
    control: Arc<Control>,
}

impl PostgresParking {
    fn counted(&self) {
        self.control.set_parked(self.parked.load(Ordering::Relaxed));
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let answer = ask(&self.requests, request).await;
        let answer = answer.unwrap_or_else(|| Err(StoreError::Backend(ENDED.into())));
        self.counted();
        answer
    }
}

impl Parking for PostgresParking {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ParkedEvent>, StoreError>> {
        Box::pin(self.ask(Request::List))
    }

    fn retry(&self) -> BoxFuture<'_, Result<Retried, StoreError>> {
        Box::pin(async move {
            let events = page::parked_events(&self.app, self.list().await?).await?;
            self.ask(|reply| Request::Retry { events, reply }).await
        })
    }

    fn skip(&self, event_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.ask(move |reply| Request::Skip { event_id, reply }))
    }
}
