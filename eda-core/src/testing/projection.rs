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
    feed: Feed,
}

/// Events as a runner would give them: the next position, each stream's next
/// version, a fresh id, now, empty metadata, the payload as `App` stores it.
#[derive(Debug, Default)]
struct Feed {
    position: u64,
    versions: HashMap<(String, String), u64>,
}

impl Feed {
    #[track_caller]
    fn next<E: Event>(
        &mut self,
        aggregate_type: &str,
        aggregate_id: &str,
        event: E,
    ) -> RecordedEvent {
        let payload = match codec::encode(&event) {
            Ok(payload) => payload,
            Err(error) => panic!("event `{}` cannot be stored: {error}", E::NAME),
        };
        let key = (aggregate_type.to_owned(), aggregate_id.to_owned());
        let version = self.versions.entry(key).or_default();
        *version += 1;
        RecordedEvent {
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
        }
    }

    /// Later events follow `recorded`'s position.
    fn follow(&mut self, recorded: &RecordedEvent) {
        self.position = self.position.max(recorded.position);
    }
}

impl<P: fmt::Debug> fmt::Debug for ProjectionFixture<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionFixture")
            .field("projection", &self.projection)
            .field("position", &self.feed.position)
            .finish_non_exhaustive()
    }
}

impl<P: MemoryProjection> ProjectionFixture<P> {
    /// A fixture on `projection`, before any event.
    pub fn new(projection: P) -> Self {
        ProjectionFixture {
            projection,
            feed: Feed::default(),
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
        let recorded = self.feed.next(aggregate_type, aggregate_id, event);
        self.given_recorded(recorded)
    }

    /// Gives a recorded event as it is (its position, ids and metadata as the
    /// test chose them); later [`given`](Self::given) events follow its position.
    ///
    /// # Panics
    /// If the projection handles its name but cannot decode it.
    #[track_caller]
    pub fn given_recorded(mut self, recorded: RecordedEvent) -> Self {
        self.feed.follow(&recorded);
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

/// A SQLite read model given events as its runner would give them, each applied
/// in a transaction of an in-memory database; query that database afterwards.
///
/// ```
/// use eda::prelude::*;
/// use eda::rusqlite::{self, Transaction};
/// use eda::testing::SqliteProjectionFixture;
/// use eda::RecordedEvent;
///
/// #[event]
/// #[derive(Debug)]
/// pub struct Registered { pub name: String }
///
/// #[derive(Debug, Default)]
/// pub struct Directory;
///
/// #[projection]
/// impl Directory {
///     #[on]
///     fn registered(&mut self, e: &Registered, recorded: &RecordedEvent, tx: &Transaction<'_>)
///         -> rusqlite::Result<()>
///     {
///         tx.execute("INSERT INTO customers VALUES (?1, ?2)", (&recorded.aggregate_id, &e.name))?;
///         Ok(())
///     }
/// }
///
/// let fixture = SqliteProjectionFixture::new(Directory)
///     .schema("CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT)")
///     .given("Customer", "c-1", Registered { name: "Ada".into() });
/// let name: String = fixture
///     .connection()
///     .query_row("SELECT name FROM customers WHERE id = 'c-1'", (), |row| row.get(0))
///     .unwrap();
/// assert_eq!(name, "Ada");
/// ```
#[cfg(feature = "sqlite")]
pub struct SqliteProjectionFixture<P> {
    projection: P,
    connection: rusqlite::Connection,
    feed: Feed,
}

#[cfg(feature = "sqlite")]
impl<P: fmt::Debug> fmt::Debug for SqliteProjectionFixture<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteProjectionFixture")
            .field("projection", &self.projection)
            .field("position", &self.feed.position)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "sqlite")]
impl<P: crate::projection::SqliteProjection> SqliteProjectionFixture<P> {
    /// A fixture on `projection` and an empty in-memory database.
    ///
    /// # Panics
    /// If SQLite cannot open an in-memory database.
    pub fn new(projection: P) -> Self {
        let connection = rusqlite::Connection::open_in_memory()
            .unwrap_or_else(|error| panic!("an in-memory SQLite database: {error}"));
        SqliteProjectionFixture {
            projection,
            connection,
            feed: Feed::default(),
        }
    }

    /// Runs `sql` (the read model's tables, rows it starts with).
    ///
    /// # Panics
    /// If SQLite refuses it.
    #[track_caller]
    pub fn schema(self, sql: &str) -> Self {
        if let Err(error) = self.connection.execute_batch(sql) {
            panic!("the read model's schema: {error}");
        }
        self
    }

    /// Gives `event` as the next event of the stream, as
    /// [`ProjectionFixture::given`] does, applied in a transaction of its own.
    ///
    /// # Panics
    /// If the event cannot be serialized, or its `#[on]` method fails.
    #[track_caller]
    pub fn given<E: Event>(mut self, aggregate_type: &str, aggregate_id: &str, event: E) -> Self {
        let recorded = self.feed.next(aggregate_type, aggregate_id, event);
        self.given_recorded(recorded)
    }

    /// Gives a recorded event as it is, applied in a transaction of its own.
    ///
    /// # Panics
    /// If the projection handles its name and its `#[on]` method fails (or the
    /// event cannot be decoded).
    #[track_caller]
    pub fn given_recorded(mut self, recorded: RecordedEvent) -> Self {
        self.feed.follow(&recorded);
        if P::EVENTS.contains(&recorded.name.as_str()) {
            let applied = self.connection.transaction().and_then(|tx| {
                let applied = self.projection.apply(&recorded, &tx);
                tx.commit().map(|()| applied)
            });
            match applied {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!(
                    "projection `{}` could not apply `{}` at position {}: {error}",
                    P::NAME,
                    recorded.name,
                    recorded.position
                ),
                Err(error) => panic!("the fixture's transaction: {error}"),
            }
        }
        self
    }

    /// The database, to query the read model.
    pub fn connection(&self) -> &rusqlite::Connection {
        &self.connection
    }

    /// The projection value.
    pub fn projection(&self) -> &P {
        &self.projection
    }
}
