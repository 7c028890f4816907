//! A running total with snapshots: the domain of the snapshot and command-path
//! tests. Adding 0 changes nothing (a no-op); a sum past `u64::MAX` is refused.

use eda::prelude::*;

/// `n` was added.
#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    /// The amount added.
    pub n: u64,
}

/// Add `n` to the tally `id`.
#[command]
#[derive(Debug, Clone)]
pub struct Add {
    /// The tally.
    #[aggregate_id]
    pub id: String,
    /// The amount.
    pub n: u64,
}

/// The total would not fit a `u64`.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the total would overflow")
    }
}

impl std::error::Error for Overflow {}

/// The total and how many additions made it; a snapshot every 3 events.
#[derive(Debug, Default, PartialEq, eda::serde::Serialize, eda::serde::Deserialize)]
#[serde(crate = "eda::serde")]
pub struct Tally {
    /// The sum of every `n` added.
    pub total: u64,
    /// How many `Added` events.
    pub count: u64,
}

#[aggregate(error = Overflow, snapshot_every = 3, snapshot_version = 2)]
impl Tally {
    #[handle]
    fn add(&self, cmd: Add) -> Result<Option<Added>, Overflow> {
        match (cmd.n, self.total.checked_add(cmd.n)) {
            (0, _) => Ok(None),
            (_, None) => Err(Overflow),
            (n, Some(_)) => Ok(Some(Added { n })),
        }
    }

    #[apply]
    fn added(&mut self, e: &Added) {
        self.total += e.n;
        self.count += 1;
    }
}
