use eda::prelude::*;

#[event(version = 0)]
#[derive(Debug)]
pub struct Opened;

fn main() {}
