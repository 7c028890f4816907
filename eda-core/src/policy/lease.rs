//! One runner of a policy at a time, across processes: a lease kept in the event
//! store as a checkpoint (`eda.lease/<policy>`) whose value is the lease's
//! expiry, in milliseconds since the Unix epoch. Taking, renewing and giving it
//! up are compare-and-sets from the value last read or written, so of two
//! runners only one moves it: the value a holder wrote is its proof of holding.

use std::time::{Duration, Instant, SystemTime};

use crate::projection::runner::Failure;
use crate::store::DynEventStore;

/// How long a lease lasts without being renewed, by default.
pub(crate) const DEFAULT: Duration = Duration::from_secs(5);

/// A runner's view of its policy's lease.
pub(crate) struct Lease {
    /// The checkpoint name it is kept under.
    name: String,
    length: Duration,
    /// The expiry this runner wrote last, while it holds the lease.
    held: Option<u64>,
    renewed_at: Option<Instant>,
}

/// Milliseconds since the Unix epoch, `after` from now: a lease's expiry,
/// which every process on the machine reads alike.
pub(crate) fn epoch_millis(after: Duration) -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    let millis = (now.unwrap_or_default() + after).as_millis();
    u64::try_from(millis).unwrap_or(u64::MAX)
}

impl Lease {
    pub(crate) fn new(policy: &str, length: Duration) -> Self {
        Lease {
            name: format!("eda.lease/{policy}"),
            length,
            held: None,
            renewed_at: None,
        }
    }

    /// Takes the lease if no runner holds it (it expired, or was given up), or
    /// keeps it if this runner does; otherwise the runner stands by.
    pub(crate) async fn acquire(&mut self, store: &dyn DynEventStore) -> Result<(), Failure> {
        let found = store.read_checkpoint(&self.name).await;
        let found = found.map_err(|error| Failure::retry(error, None))?;
        let free = found.is_none_or(|expiry| expiry < epoch_millis(Duration::ZERO));
        // The control of the one-runner-at-a-time tests: every runner takes it.
        let ignored = crate::failpoint::broken("runner.turn_ignored");
        if !free && found != self.held && !ignored {
            let error = format!("another runner holds the lease `{}`", self.name);
            return Err(Failure::standby(error));
        }
        self.held = found;
        self.move_to(store, epoch_millis(self.length)).await
    }

    /// How often an idle holder renews it: a fifth of it.
    pub(crate) fn renew_every(&self) -> Duration {
        self.length / 5
    }

    /// Renews the lease if a fifth of it has passed; a runner that lost it
    /// (another took it after it expired) stands by.
    pub(crate) async fn renew(&mut self, store: &dyn DynEventStore) -> Result<(), Failure> {
        if self
            .renewed_at
            .is_some_and(|at| at.elapsed() < self.renew_every())
        {
            return Ok(());
        }
        self.move_to(store, epoch_millis(self.length)).await
    }

    /// Gives the lease up: it expires now.
    pub(crate) async fn release(&mut self, store: &dyn DynEventStore) {
        if self.held.is_some() {
            if let Err(failure) = self.move_to(store, 0).await {
                tracing::warn!(
                    lease = self.name,
                    error = failure.error,
                    "the lease could not be given up: it expires"
                );
            }
            self.held = None;
        }
    }

    async fn move_to(&mut self, store: &dyn DynEventStore, expiry: u64) -> Result<(), Failure> {
        match store.write_checkpoint(&self.name, self.held, expiry).await {
            Ok(()) => {
                self.held = Some(expiry);
                self.renewed_at = Some(Instant::now());
                Ok(())
            }
            Err(crate::StoreError::CheckpointMoved { .. }) => {
                self.held = None;
                let error = format!("the runner lost the lease `{}`", self.name);
                Err(Failure::standby(error))
            }
            Err(error) => Err(Failure::retry(error, None)),
        }
    }
}
