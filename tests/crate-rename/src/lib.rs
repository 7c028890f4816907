//! A domain crate that depends on eda under another name (`framework`), as a crate
//! re-exporting eda would. The macros must expand against `crate = framework`:
//! there is no `::eda` here for them to fall back on.

use framework::rusqlite::{self, Transaction};
use framework::{aggregate, command, event, policy, projection, RecordedEvent};

/// Something happened.
#[event(crate = framework)]
#[derive(Debug, Clone, PartialEq)]
pub struct Pinged {
    /// How many times.
    pub times: u32,
}

/// Ask for a ping.
#[command(crate = framework)]
#[derive(Debug, Clone)]
pub struct Ping {
    /// Which pinger.
    #[aggregate_id]
    pub id: String,
}

/// Ask for a ping that consults the services, asynchronously.
#[command(crate = framework)]
#[derive(Debug, Clone)]
pub struct PingLater {
    /// Which pinger.
    #[aggregate_id]
    pub id: String,
}

/// What the pinger's handlers consult.
pub struct Echo {
    /// Added to every count.
    pub step: u32,
}

/// Counts pings.
#[derive(Debug, Default)]
pub struct Pinger {
    /// Pings so far.
    pub pings: u32,
}

#[aggregate(error = std::convert::Infallible, services = Echo, crate = "framework")]
impl Pinger {
    #[handle]
    fn ping(&self, _: Ping, echo: &Echo) -> Result<Pinged, std::convert::Infallible> {
        Ok(Pinged {
            times: self.pings + echo.step,
        })
    }

    #[handle]
    async fn ping_later(
        &self,
        _: PingLater,
        echo: &Echo,
    ) -> Result<Pinged, std::convert::Infallible> {
        Ok(Pinged {
            times: self.pings + echo.step,
        })
    }

    #[apply]
    fn pinged(&mut self, e: &Pinged) {
        self.pings = e.times;
    }
}

/// Pings in a SQLite table.
#[derive(Debug, Default)]
pub struct PingTable;

#[projection(crate = framework, name = "ping_table")]
impl PingTable {
    #[on]
    fn pinged(
        &mut self,
        e: &Pinged,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO pings (pinger, times) VALUES (?1, ?2)",
            (&recorded.aggregate_id, e.times),
        )?;
        Ok(())
    }
}

/// Pings in a PostgreSQL table (without the recorded event).
#[cfg(feature = "postgres")]
#[derive(Debug, Default)]
pub struct PingRows;

#[cfg(feature = "postgres")]
#[projection(crate = framework, name = "ping_rows")]
impl PingRows {
    #[on]
    async fn pinged(
        &mut self,
        e: &Pinged,
        tx: &framework::tokio_postgres::Transaction<'_>,
    ) -> Result<(), framework::tokio_postgres::Error> {
        let times = i64::from(e.times);
        tx.execute("INSERT INTO pings (times) VALUES ($1)", &[&times])
            .await?;
        Ok(())
    }
}

/// Pings back.
#[derive(Debug, Default)]
pub struct Echoes;

#[policy(crate = "framework")]
impl Echoes {
    #[on]
    fn pinged(&self, _: &Pinged, recorded: &RecordedEvent) -> Option<Ping> {
        Some(Ping {
            id: recorded.aggregate_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use framework::testing::Fixture;

    #[test]
    fn macros_expand_against_the_renamed_crate() {
        let pinger = Fixture::<Pinger>::given(Pinged { times: 1 })
            .with_services(Echo { step: 1 })
            .when(Ping { id: "p".into() })
            .then_expect_events(Pinged { times: 2 });
        assert_eq!(pinger.pings, 2);
        Fixture::<Pinger>::given(Pinged { times: 1 })
            .with_services(Echo { step: 2 })
            .when(PingLater { id: "p".into() })
            .then_expect_events(Pinged { times: 3 });
        assert_eq!(<Pinged as framework::Event>::NAME, "Pinged");
        assert!(framework::registry().get("Pinged", 1).is_some());
        assert_eq!(<PingTable as framework::Projection>::NAME, "ping_table");
        #[cfg(feature = "postgres")]
        assert_eq!(<PingRows as framework::Projection>::EVENTS, ["Pinged"]);
        assert_eq!(<Echoes as framework::Policy>::EVENTS, ["Pinged"]);
    }
}
