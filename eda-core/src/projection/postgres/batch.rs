//! The page's transaction as its `#[on]` methods see it: [`PostgresBatch`].
//!
//! A statement written with `tx.execute(..).await` costs a round trip to the
//! server per event: the server waits for the runner to send the next
//! statement, and the runner for the server to answer. Statements queued with
//! [`PostgresBatch::queue`] are sent together, pipelined on the runner's
//! connection, when the page's transaction needs them: at the page's end,
//! before the checkpoint moves; or before a method that takes the transaction
//! itself runs, so that it reads what the events before it wrote.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Statement, Transaction};

use crate::projection::{lock, ApplyError};

/// A statement's parameters as the batch keeps them until it sends them.
pub type BoxedParams = Vec<Box<dyn ToSql + Send + Sync>>;

/// How many queued statements a connection keeps prepared at most.
const MAX_PREPARED: usize = 256;

/// The prepared statements of a connection, by their SQL.
pub(crate) type Prepared = HashMap<Cow<'static, str>, Statement>;

/// The runner's transaction for a page of events, as a PostgreSQL read model's
/// async `#[on]` methods take it: `tx: &PostgresBatch<'_>` instead of
/// `tx: &Transaction<'_>`.
///
/// [`queue`](Self::queue) a statement instead of awaiting it: the runner sends
/// the page's queued statements together, pipelined on its connection (one
/// round trip for the page, not one per event), and waits for them before it
/// moves the checkpoint in the same transaction. A statement that fails is the
/// failure of the event whose method queued it: the event is retried, then
/// parked, as if its method had returned the error.
///
/// [`transaction`](Self::transaction) sends what is queued, waits for it, and
/// gives the transaction itself, for a method that reads the read model (or
/// writes with statements of its own). A projection may mix methods that take
/// `&PostgresBatch` with methods that take `&Transaction`: the runner sends the
/// queued statements before a method that takes the transaction runs, so every
/// method sees the writes of the events before it, in the log's order.
///
/// Each distinct statement is prepared once per connection.
///
/// ```no_run
/// use eda::prelude::*;
/// use eda::{PostgresBatch, RecordedEvent};
/// # #[event] #[derive(Debug)] pub struct Deposited { pub amount: i64 }
///
/// #[derive(Debug, Default)]
/// pub struct Balances;
///
/// #[projection(name = "balances")]
/// impl Balances {
///     #[on]
///     async fn deposited(
///         &mut self,
///         e: &Deposited,
///         recorded: &RecordedEvent,
///         tx: &PostgresBatch<'_>,
///     ) -> Result<(), eda::tokio_postgres::Error> {
///         tx.queue(
///             "INSERT INTO balances (account, balance) VALUES ($1, $2)
///              ON CONFLICT (account) DO UPDATE SET balance = balances.balance + $2",
///             (recorded.aggregate_id.clone(), e.amount),
///         );
///         Ok(())
///     }
/// }
/// ```
pub struct PostgresBatch<'t> {
    tx: Transaction<'t>,
    prepared: Mutex<&'t mut Prepared>,
    queued: Mutex<Vec<Queued>>,
    /// The index in the page of the event whose method runs.
    event: AtomicUsize,
    /// The first statement that failed: its event's index, and its error.
    failed: Mutex<Option<(usize, Error)>>,
}

/// A statement queued by the method of the event at `event` (its index in the page).
struct Queued {
    event: usize,
    statement: Cow<'static, str>,
    params: BoxedParams,
}

impl fmt::Debug for PostgresBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBatch")
            .field("queued", &lock(&self.queued).len())
            .finish_non_exhaustive()
    }
}

impl<'t> PostgresBatch<'t> {
    pub(crate) fn new(tx: Transaction<'t>, prepared: &'t mut Prepared) -> Self {
        PostgresBatch {
            tx,
            prepared: Mutex::new(prepared),
            queued: Mutex::new(Vec::new()),
            event: AtomicUsize::new(0),
            failed: Mutex::new(None),
        }
    }

    /// Queues `statement` with `params`, to be sent with the page's other
    /// queued statements, in the order they were queued. `params` is a tuple
    /// of owned values (`(id, name.clone(), amount)`, `()` for none) or a
    /// [`BoxedParams`]: the batch keeps them until it sends the statement.
    ///
    /// Its error, if it fails, is the event's: the runner retries the event,
    /// then parks it, as for an error the method returns.
    pub fn queue(&self, statement: impl Into<Cow<'static, str>>, params: impl PostgresParams) {
        lock(&self.queued).push(Queued {
            event: self.event.load(Ordering::Relaxed),
            statement: statement.into(),
            params: params.into_params(),
        });
    }

    /// Sends the queued statements, waits for them, and gives the transaction:
    /// what a method that reads the read model calls before it reads. If a
    /// queued statement failed, the transaction is aborted: the method's own
    /// statements fail too, and the runner blames the event whose statement
    /// failed first.
    pub async fn transaction(&self) -> &Transaction<'t> {
        self.flush().await;
        &self.tx
    }

    /// The transaction as it is, queued statements not sent.
    pub(crate) fn raw(&self) -> &Transaction<'t> {
        &self.tx
    }

    pub(crate) fn into_transaction(self) -> Transaction<'t> {
        self.tx
    }

    /// Says which event of the page the next statements are queued for.
    pub(super) fn set_event(&self, index: usize) {
        self.event.store(index, Ordering::Relaxed);
    }

    /// Sends the queued statements and waits for them: the first that failed,
    /// with the index of its event (or the failure an earlier flush found).
    pub(crate) async fn finish(&self) -> Result<(), (usize, ApplyError)> {
        self.flush().await;
        match lock(&self.failed).take() {
            Some((index, error)) => Err((index, ApplyError::Handler(Box::new(error)))),
            None => Ok(()),
        }
    }

    /// The failure a flush found, if any, taken: with the index of its event.
    pub(super) fn take_failure(&self) -> Option<(usize, ApplyError)> {
        let failed = lock(&self.failed).take();
        failed.map(|(index, error)| (index, ApplyError::Handler(Box::new(error))))
    }

    /// Sends every queued statement (prepared first, once per connection),
    /// pipelined in the order they were queued, and waits for their results;
    /// records the first that failed. Nothing is sent after a failure.
    async fn flush(&self) {
        let queued = std::mem::take(&mut *lock(&self.queued));
        if queued.is_empty() || lock(&self.failed).is_some() {
            return;
        }
        let mut statements = Vec::with_capacity(queued.len());
        for item in &queued {
            match self.prepare(&item.statement).await {
                Ok(statement) => statements.push(statement),
                Err(error) => {
                    *lock(&self.failed) = Some((item.event, error));
                    return;
                }
            }
        }
        // `join_all` polls the futures in order the first time, and the
        // driver sends each request when its future is first polled: the
        // statements go out in the order they were queued, one after another
        // without waiting for the answers.
        let executions = queued.iter().zip(&statements).map(|(item, statement)| {
            let params = item
                .params
                .iter()
                .map(|param| &**param as &(dyn ToSql + Sync));
            self.tx.execute_raw(statement, params)
        });
        let results = futures_util::future::join_all(executions).await;
        let failed = queued.iter().zip(results).find_map(|(item, result)| {
            let error = result.err()?;
            Some((item.event, error))
        });
        if failed.is_some() {
            *lock(&self.failed) = failed;
        }
    }

    /// `statement`, prepared on this connection (once).
    pub(crate) async fn prepare(&self, statement: &str) -> Result<Statement, Error> {
        if let Some(prepared) = lock(&self.prepared).get(statement) {
            return Ok(prepared.clone());
        }
        let prepared = self.tx.prepare(statement).await?;
        let key = Cow::Owned(statement.to_owned());
        let mut cache = lock(&self.prepared);
        // Statements built with their values in them would each be prepared
        // anew: the cache stays bounded (the server frees a statement once
        // its last handle is dropped).
        if cache.len() >= MAX_PREPARED {
            cache.clear();
        }
        cache.insert(key, prepared.clone());
        Ok(prepared)
    }
}

/// The parameters of a [`PostgresBatch::queue`]d statement: a tuple of up to
/// 16 owned values (each `ToSql + Send + Sync + 'static`), `()`, or
/// [`BoxedParams`].
#[diagnostic::on_unimplemented(
    message = "the parameters of a queued statement are a tuple of owned values, `()`, or `eda::BoxedParams`: not `{Self}`",
    label = "not a tuple of owned parameters",
    note = "the batch keeps them until it sends the statement: clone what you borrow, as in `(recorded.aggregate_id.clone(), e.amount)`"
)]
pub trait PostgresParams {
    /// The values, boxed.
    fn into_params(self) -> BoxedParams;
}

impl PostgresParams for BoxedParams {
    fn into_params(self) -> BoxedParams {
        self
    }
}

macro_rules! params {
    ($($name:ident),*) => {
        impl<$($name),*> PostgresParams for ($($name,)*)
        where
            $($name: ToSql + Send + Sync + 'static),*
        {
            #[allow(non_snake_case)]
            fn into_params(self) -> BoxedParams {
                let ($($name,)*) = self;
                vec![$(Box::new($name)),*]
            }
        }
    };
}

params!();
params!(A);
params!(A, B);
params!(A, B, C);
params!(A, B, C, D);
params!(A, B, C, D, E);
params!(A, B, C, D, E, F);
params!(A, B, C, D, E, F, G);
params!(A, B, C, D, E, F, G, H);
params!(A, B, C, D, E, F, G, H, I);
params!(A, B, C, D, E, F, G, H, I, J);
params!(A, B, C, D, E, F, G, H, I, J, K);
params!(A, B, C, D, E, F, G, H, I, J, K, L);
params!(A, B, C, D, E, F, G, H, I, J, K, L, M);
params!(A, B, C, D, E, F, G, H, I, J, K, L, M, N);
params!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, O);
params!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P);
