use eda::prelude::*;

#[event(subject = "customers.registered")]
#[derive(Debug)]
pub struct CustomerRegistered {
    pub name: String,
}

fn main() {}
