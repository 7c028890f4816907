//! A domain crate that depends on eda under another name (`framework`), as a crate
//! re-exporting eda would. The macros must expand against `crate = framework`:
//! there is no `::eda` here for them to fall back on.

use framework::{aggregate, command, event};

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

/// Counts pings.
#[derive(Debug, Default)]
pub struct Pinger {
    /// Pings so far.
    pub pings: u32,
}

#[aggregate(error = std::convert::Infallible, crate = "framework")]
impl Pinger {
    #[handle]
    fn ping(&self, _: Ping) -> Result<Pinged, std::convert::Infallible> {
        Ok(Pinged {
            times: self.pings + 1,
        })
    }

    #[apply]
    fn pinged(&mut self, e: &Pinged) {
        self.pings = e.times;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use framework::testing::Fixture;

    #[test]
    fn macros_expand_against_the_renamed_crate() {
        let pinger = Fixture::<Pinger>::given(Pinged { times: 1 })
            .when(Ping { id: "p".into() })
            .then_expect_events(Pinged { times: 2 });
        assert_eq!(pinger.pings, 2);
        assert_eq!(<Pinged as framework::Event>::NAME, "Pinged");
        assert!(framework::registry().get("Pinged", 1).is_some());
    }
}
