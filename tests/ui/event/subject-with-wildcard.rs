use eda::prelude::*;

#[event(public, subject = "customers.*")]
#[derive(Debug)]
pub struct CustomerRegistered {
    pub name: String,
}

fn main() {}
