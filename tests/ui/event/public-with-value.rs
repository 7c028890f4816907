use eda::prelude::*;

#[event(public = true)]
#[derive(Debug)]
pub struct CustomerRegistered {
    pub name: String,
}

fn main() {}
