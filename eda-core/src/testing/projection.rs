//! [`ProjectionFixture`]: a projection fed events directly, without a store or a
//! runner, to assert on its read model.

use std::collections::HashMap;
use std::fmt;

use chrono::Utc;

use crate::codec;
use crate::envelope::{Metadata, RecordedEvent};
use crate::event::Event;
use crate::event_id::new_event_id;
use crate::projection::MemoryProjection;

/// A projection given events as its runner would give them.
///
/// ```
/// use eda::prelude::*;
/// use eda::testing::ProjectionFixture;
/// use eda::RecordedEvent;
///
/// #[event]
/// #[derive(Debug)]
/// pub struct Registered { pub name: String }
///
/// #[derive(Debug, Default)]
/// pub struct Directory { names: Vec<(String, String)> }
///
/// #[projection]
/// impl Directory {
///     #[on]
///     fn registered(&mut self, e: &Registered, recorded: &RecordedEvent) {
///         self.names.push((recorded.aggregate_id.clone(), e.name.clone()));
///     }
/// }
///
/// let directory = ProjectionFixture::new(Directory::default())
///     .given("Customer", "c-1", Registered { name: "Ada".into() })
///     .given("Customer", "c-2", Registered { name: "Grace".into() })
///     .into_state();
/// assert_eq!(directory.names[1], ("c-2".to_string(), "Grace".to_string()));
/// ```
pub struct ProjectionFixture<P> {
    projection: P,
    position: u64,
    versions: HashMap<(String, String), u64>,
}

impl<P: fmt::Debug> fmt::Debug for ProjectionFixture<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionFixture")
            .field("projection", &self.projection)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<P: MemoryProjection> ProjectionFixture<P> {
    /// A fixture on `projection`, before any event.
    pub fn new(projection: P) -> Self {
        ProjectionFixture {
            projection,
            position: 0,
            versions: HashMap::new(),
        }
    }

    /// Gives `event` as the next event of the stream `aggregate_type` /
    /// `aggregate_id`: serialized as `App` stores it, at the next position and the
    /// stream's next version, with a fresh id, the current time and empty
    /// metadata. An event the projection does not handle is passed over, as its
    /// runner does.
    ///
    /// # Panics
    /// If the event cannot be serialized, or the projection cannot decode it.
    #[track_caller]
    pub fn given<E: Event>(mut self, aggregate_type: &str, aggregate_id: &str, event: E) -> Self {
        let payload = match codec::encode(&event) {
            Ok(payload) => payload,
            Err(error) => panic!("event `{}` cannot be stored: {error}", E::NAME),
        };
        let key = (aggregate_type.to_owned(), aggregate_id.to_owned());
        let version = self.versions.entry(key).or_default();
        *version += 1;
        let recorded = RecordedEvent {
            event_id: new_event_id(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version: *version,
            position: self.position + 1,
            name: E::NAME.to_owned(),
            event_version: E::VERSION,
            payload,
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
        };
        self.given_recorded(recorded)
    }

    /// Gives a recorded event as it is (its position, ids and metadata as the
    /// test chose them); later [`given`](Self::given) events follow its position.
    ///
    /// # Panics
    /// If the projection handles its name but cannot decode it.
    #[track_caller]
    pub fn given_recorded(mut self, recorded: RecordedEvent) -> Self {
        self.position = self.position.max(recorded.position);
        if P::EVENTS.contains(&recorded.name.as_str()) {
            if let Err(kind) = self.projection.apply(&recorded) {
                panic!(
                    "projection `{}` cannot decode `{}` v{}: {kind}",
                    P::NAME,
                    recorded.name,
                    recorded.event_version
                );
            }
        }
        self
    }

    /// The read model as the events left it.
    pub fn state(&self) -> &P {
        &self.projection
    }

    /// The read model, to keep.
    pub fn into_state(self) -> P {
        self.projection
    }
}
