use eda::prelude::*;

#[event(name = "Price{Set}", version = 1)]
#[derive(Debug)]
pub struct PriceSetV1 {
    pub cents: u64,
}

#[event(name = "Price{Changed}", version = 2, upcast_from = PriceSetV1)]
#[derive(Debug)]
pub struct PriceChanged {
    pub cents: u64,
}

impl From<PriceSetV1> for PriceChanged {
    fn from(old: PriceSetV1) -> Self {
        PriceChanged { cents: old.cents }
    }
}

fn main() {}
