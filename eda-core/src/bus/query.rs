//! Queries between services: a service answers questions about its current
//! state (request-reply), for consumers of its event notifications.
//!
//! A notification (`CustomerRelocated`) says that something changed, not what
//! it is now: the consumer asks the producer (`customers.address`). The
//! producer answers with [`answer`]; the consumer asks with [`ask`], through
//! the [resilience](crate::resilience) policies of its choice (a timeout, a
//! circuit breaker), since the producer may be down.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::BusError;

/// How long [`ask`] waits for an answer, by default.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A question another service answers: its name and the type of its answer.
///
/// ```
/// use eda::bus::Query;
/// # use eda::serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// # #[serde(crate = "eda::serde")]
/// pub struct Address {
///     pub customer: String,
/// }
///
/// impl Query for Address {
///     const NAME: &'static str = "customers.address";
///     type Answer = Option<String>;
/// }
/// ```
pub trait Query: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Its name, dot-separated tokens (`service.question`): whoever answers
    /// it, answers under this name.
    const NAME: &'static str;
    /// What the answer is.
    type Answer: Serialize + DeserializeOwned + Send + 'static;
}

/// A future of a query's handler: the answer's wire form, the JSON of a
/// `Result<Q::Answer, String>`.
pub type AnswerFuture = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// What answers a query on a bus, in its wire form (the query's JSON in).
pub type Handler = Arc<dyn Fn(Vec<u8>) -> AnswerFuture + Send + Sync>;

/// A bus that carries queries: [`LocalBus`](super::LocalBus) in one
/// process, [`NatsBus`](super::NatsBus) over NATS request-reply. Use the
/// typed [`ask`] and [`answer`].
pub trait Queries: Send + Sync + 'static {
    /// Sends `request` to whoever answers `name` and waits for the answer, at
    /// most `timeout`: [`BusError::Unavailable`] if nobody answers in time.
    fn request(
        &self,
        name: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, BusError>> + Send;

    /// Answers `name` with `handler` until the returned [`Answering`] is
    /// dropped.
    fn serve(
        &self,
        name: &str,
        handler: Handler,
    ) -> impl Future<Output = Result<Answering, BusError>> + Send;
}

/// A query being answered: dropping it stops answering.
pub struct Answering {
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl fmt::Debug for Answering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answering").finish_non_exhaustive()
    }
}

impl Answering {
    pub(super) fn new(stop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Answering {
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// Asks `query` of the service that answers it, waiting at most
/// [`ASK_TIMEOUT`] (2 s).
///
/// # Errors
/// [`BusError::Unavailable`] if nobody answers in time (the producer is down:
/// try again later, or through a circuit breaker); [`BusError::Refused`] if
/// the answerer failed, or its answer does not decode.
pub async fn ask<Q: Query>(bus: &impl Queries, query: &Q) -> Result<Q::Answer, BusError> {
    ask_within(bus, query, ASK_TIMEOUT).await
}

/// [`ask`], waiting at most `timeout`.
///
/// # Errors
/// As [`ask`].
pub async fn ask_within<Q: Query>(
    bus: &impl Queries,
    query: &Q,
    timeout: Duration,
) -> Result<Q::Answer, BusError> {
    let refused = |reason: String| BusError::Refused {
        what: "query",
        reason: format!("`{}`: {reason}", Q::NAME),
    };
    let request = serde_json::to_vec(query).map_err(|error| refused(error.to_string()))?;
    let answer = bus.request(Q::NAME, request, timeout).await?;
    let answer: Result<Q::Answer, String> =
        serde_json::from_slice(&answer).map_err(|error| refused(error.to_string()))?;
    answer.map_err(refused)
}

/// Answers `Q` on `bus` with `handler` until the returned [`Answering`] is
/// dropped. An error the handler returns is the asker's
/// [`BusError::Refused`].
///
/// # Errors
/// The bus cannot be reached.
pub async fn answer<Q, F, Fut, E>(bus: &impl Queries, handler: F) -> Result<Answering, BusError>
where
    Q: Query,
    F: Fn(Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Q::Answer, E>> + Send + 'static,
    E: fmt::Display,
{
    let handler = Arc::new(handler);
    let wire: Handler = Arc::new(move |request: Vec<u8>| {
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            let answer = match serde_json::from_slice::<Q>(&request) {
                Ok(query) => handler(query).await.map_err(|error| error.to_string()),
                Err(error) => Err(format!("the query does not decode: {error}")),
            };
            serde_json::to_vec(&answer).unwrap_or_else(|error| failed(&error.to_string()))
        }) as AnswerFuture
    });
    bus.serve(Q::NAME, wire).await
}

/// The wire form of a failed answer.
fn failed(reason: &str) -> Vec<u8> {
    serde_json::to_vec(&Err::<(), &str>(reason)).unwrap_or_default()
}
