use eda::prelude::*;

#[event(name = "Moved", version = 1)]
#[derive(Debug)]
pub struct MovedV1 {
    pub to: String,
}

#[event(name = "Moved", version = 2, upcast_from = MovedV1)]
#[derive(Debug)]
pub struct Moved {
    pub to: String,
    pub since: String,
}

impl From<MovedV1> for Moved {
    fn from(old: MovedV1) -> Self {
        Moved { to: old.to, since: String::new() }
    }
}

#[command]
#[derive(Debug, Clone)]
pub struct CheckAddress {
    #[aggregate_id]
    pub address: String,
}

#[derive(Debug, Default)]
pub struct Address;

#[aggregate(error = std::convert::Infallible)]
impl Address {
    #[handle]
    fn check(&self, _: CheckAddress) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct AddressChecks;

#[policy]
impl AddressChecks {
    #[on]
    fn moved_v1(&self, e: &MovedV1) -> CheckAddress {
        CheckAddress { address: e.to.clone() }
    }

    #[on]
    fn moved(&self, e: &Moved) -> CheckAddress {
        CheckAddress { address: e.to.clone() }
    }
}

fn main() {}
