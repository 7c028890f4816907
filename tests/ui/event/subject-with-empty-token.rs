use eda::prelude::*;

#[event(public, subject = "customers..registered")]
#[derive(Debug)]
pub struct CustomerRegistered {
    pub name: String,
}

fn main() {}
