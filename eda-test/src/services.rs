//! The services tests' producer and consumer (feature `sqlite`): members
//! whose public `MemberJoined` the relay publishes, and a mailing consumer
//! that records each application in a SQLite `applications` table, in order.
//! (Names of their own: the tests' binaries declare customers' events.)

use std::path::Path;

use eda::prelude::*;
use eda::rusqlite::{self, Transaction};
use eda::RecordedEvent;

/// A member joined: public.
#[event(public)]
#[derive(Debug, Clone)]
pub struct MemberJoined {
    /// The member's name.
    pub name: String,
}

/// Member `id` (named `id`) joins.
#[command]
#[derive(Debug, Clone)]
pub struct Join {
    /// The member.
    #[aggregate_id]
    pub id: String,
}

/// A member: joining only.
#[derive(Debug, Default)]
pub struct Member;

#[aggregate(error = std::convert::Infallible)]
impl Member {
    #[handle]
    fn join(&self, c: Join) -> Result<MemberJoined, std::convert::Infallible> {
        Ok(MemberJoined { name: c.id })
    }

    #[apply]
    fn joined(&mut self, _: &MemberJoined) {}
}

/// The consumer's read model: every application, in order, in the
/// `applications` table ([`create`] makes it).
#[derive(Debug, Default)]
pub struct Mailing;

#[projection(name = "mailing")]
impl Mailing {
    #[on]
    fn joined(
        &mut self,
        _: &MemberJoined,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO applications (event_id) VALUES (?1)",
            [recorded.event_id.to_string()],
        )?;
        Ok(())
    }
}

/// Creates [`Mailing`]'s table in `path` (if it is missing).
pub fn create(path: &Path) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS applications (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL)",
        )
        .unwrap();
}

/// The event ids [`Mailing`] applied, in order.
pub fn applications(path: &Path) -> Vec<String> {
    create(path);
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT event_id FROM applications ORDER BY seq")
        .unwrap();
    let ids = statement.query_map((), |row| row.get(0)).unwrap();
    ids.map(Result::unwrap).collect()
}

/// How many events [`Mailing`] applied, counting each once.
pub fn distinct(path: &Path) -> u64 {
    create(path);
    let connection = rusqlite::Connection::open(path).unwrap();
    let count: i64 = connection
        .query_row(
            "SELECT count(DISTINCT event_id) FROM applications",
            (),
            |row| row.get(0),
        )
        .unwrap();
    count as u64
}
