//! The in-memory kind's sink: the state is the projection value, rebuilt from the
//! start of the log whenever its runner starts.

use std::sync::{Arc, Mutex};

use super::runner::{Failure, Rebuild, Sink, Started};
use super::{lock, MemoryProjection};
use crate::error::DecodeError;
use crate::store::LogPage;

/// Applies pages to a projection value shared with its handles.
pub(super) struct MemorySink<P> {
    state: Arc<Mutex<P>>,
}

impl<P> MemorySink<P> {
    pub(super) fn new(state: Arc<Mutex<P>>) -> Self {
        MemorySink { state }
    }
}

impl<P: MemoryProjection> Sink for MemorySink<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn events(&self) -> &'static [&'static str] {
        P::EVENTS
    }

    /// Every start is a rebuild: the value the runner was given, fed from the
    /// start of the log.
    async fn start(&mut self) -> Result<Started, Failure> {
        Ok(Started {
            checkpoint: 0,
            rebuild: Some(Rebuild::Start),
        })
    }

    /// Applies the events in order under one lock, on a thread that may block
    /// (so that a slow `#[on]` method delays no other task of the runtime); the
    /// first that cannot be decoded stops the runner there (the events before
    /// it stay applied).
    async fn apply(&mut self, page: LogPage, _: bool) -> Result<(), Failure> {
        if page.events.is_empty() {
            return Ok(());
        }
        let state = Arc::clone(&self.state);
        let applied = tokio::task::spawn_blocking(move || {
            let mut state = lock(&state);
            for (done, event) in page.events.iter().enumerate() {
                if let Err(kind) = state.apply(event) {
                    let error = DecodeError::at(&event.as_event_ref(), kind);
                    let mut failure = Failure::stop(error, Some(event.position - 1));
                    failure.applied = done as u64;
                    return Err(failure);
                }
            }
            Ok(())
        })
        .await;
        // A panicking #[on] method: the state is as far as it got.
        applied.unwrap_or_else(|join| Err(Failure::stop(join, None)))
    }
}
