use eda::prelude::*;

#[event]
#[derive(Debug)]
pub enum Happened {
    Opened,
    Closed,
}

fn main() {}
