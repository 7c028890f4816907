use eda::prelude::*;

#[policy]
#[derive(Debug, Default)]
pub struct Greeter;

fn main() {}
