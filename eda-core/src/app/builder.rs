//! [`AppBuilder`]: the settings of an [`App`] and the services its handlers take.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::cache::Cache;
use super::execute::Backoff;
use super::{App, Inner};
use crate::error::RegistryError;
use crate::registry::registry;
use crate::store::DynEventStore;

/// Configures an [`App`]: `App::builder(store).max_conflict_retries(3).build()?`.
#[must_use]
pub struct AppBuilder {
    store: Box<dyn DynEventStore>,
    cache_capacity: usize,
    max_conflict_retries: u32,
    conflict_backoff: Backoff,
    services: ServiceMap,
}

impl fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBuilder")
            .field("cache_capacity", &self.cache_capacity)
            .field("max_conflict_retries", &self.max_conflict_retries)
            .field("services", &service_names(&self.services))
            .finish_non_exhaustive()
    }
}

impl AppBuilder {
    pub(super) fn new(store: Box<dyn DynEventStore>) -> Self {
        AppBuilder {
            store,
            cache_capacity: 10_000,
            max_conflict_retries: 50,
            conflict_backoff: Backoff {
                first: Duration::from_millis(2),
                max: Duration::from_millis(100),
            },
            services: ServiceMap::default(),
        }
    }

    /// How many times a command is decided again after a version conflict before
    /// [`CommandError::Conflict`](crate::CommandError::Conflict) is returned. Default: 50 (with the pauses of
    /// [`conflict_backoff`](Self::conflict_backoff) between them).
    pub fn max_conflict_retries(mut self, retries: u32) -> Self {
        self.max_conflict_retries = retries;
        self
    }

    /// How long to wait before deciding a command again after a version conflict:
    /// a random pause up to `first`, doubling with each further conflict of the
    /// same command, at most `max`. Default: 2 ms, at most 100 ms.
    /// `Duration::ZERO` retries at once.
    pub fn conflict_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.conflict_backoff = Backoff { first, max };
        self
    }

    /// How many instances of each aggregate type stay loaded between commands.
    /// `0` turns the cache off (every command replays its stream). Default: 10,000.
    pub fn cache_capacity(mut self, instances: usize) -> Self {
        self.cache_capacity = instances;
        self
    }

    /// Gives the handlers of every aggregate declaring `services = S` this value.
    ///
    /// One value per type: giving a second value of the same type replaces the first.
    /// Aggregates without `services =` need nothing. Executing a command of an
    /// aggregate whose services were not given fails with
    /// [`CommandError::MissingServices`](crate::CommandError::MissingServices).
    ///
    /// A handler may run more than once for one command (again after a version
    /// conflict, with the state caught up), so the services it calls must tolerate
    /// that: queries, or idempotent requests.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use eda::prelude::*;
    ///
    /// /// What the bank's handlers consult; a trait object, so tests can swap it.
    /// pub struct BankServices { pub fraud: Arc<dyn Fn(u64) -> bool + Send + Sync> }
    ///
    /// #[event] #[derive(Debug)] pub struct Withdrawn { pub amount: u64 }
    /// #[command] #[derive(Debug, Clone)]
    /// pub struct Withdraw { #[aggregate_id] pub id: String, pub amount: u64 }
    /// #[derive(Debug, Default)] pub struct Account;
    /// #[derive(Debug)] pub enum AccountError { Suspicious }
    ///
    /// #[aggregate(error = AccountError, services = BankServices)]
    /// impl Account {
    ///     #[handle]
    ///     fn withdraw(&self, cmd: Withdraw, bank: &BankServices) -> Result<Withdrawn, AccountError> {
    ///         if (bank.fraud)(cmd.amount) { return Err(AccountError::Suspicious); }
    ///         Ok(Withdrawn { amount: cmd.amount })
    ///     }
    ///     #[apply] fn withdrawn(&mut self, _: &Withdrawn) {}
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let bank = BankServices { fraud: Arc::new(|amount| amount > 1_000) };
    /// let app = App::builder(MemoryStore::new()).services(bank).build()?;
    /// let small = Withdraw { id: "a".into(), amount: 10 };
    /// assert_eq!(app.execute(small.clone()).await.unwrap().version, 1);
    /// let large = Withdraw { id: "a".into(), amount: 5_000 };
    /// assert!(matches!(app.execute(large).await, Err(CommandError::Rejected(AccountError::Suspicious))));
    ///
    /// let without = App::new(MemoryStore::new());
    /// assert!(matches!(without.execute(small).await, Err(CommandError::MissingServices { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn services<S: Send + Sync + 'static>(mut self, value: S) -> Self {
        let service = Service {
            value: Box::new(value),
            type_name: std::any::type_name::<S>(),
        };
        self.services.insert(TypeId::of::<S>(), service);
        self
    }

    /// Builds the `App`, failing if two event types share a name and version.
    pub fn build(self) -> Result<App, RegistryError> {
        registry().check()?;
        Ok(App {
            inner: Arc::new(Inner {
                store: self.store,
                head: tokio::sync::watch::Sender::new(0),
                cache: Cache::new(self.cache_capacity),
                max_conflict_retries: self.max_conflict_retries,
                conflict_backoff: self.conflict_backoff,
                services: self.services,
            }),
        })
    }
}

/// Service values by type, each shared by every aggregate that declares it. Filled
/// by the builder and read-only afterwards, so look-ups take no lock.
pub(super) type ServiceMap = foldhash::HashMap<TypeId, Service>;

pub(super) struct Service {
    pub(super) value: Box<dyn Any + Send + Sync>,
    /// For `Debug`: a `dyn Any` cannot say what it holds.
    type_name: &'static str,
}

pub(super) fn service_names(services: &ServiceMap) -> Vec<&'static str> {
    let mut names: Vec<_> = services.values().map(|s| s.type_name).collect();
    names.sort_unstable();
    names
}
