use eda::prelude::*;

#[event(name = "CustomerRegistered", copy, public)]
#[derive(Debug)]
pub struct Registered {
    pub name: String,
}

fn main() {}
