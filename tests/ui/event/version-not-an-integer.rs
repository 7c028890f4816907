use eda::prelude::*;

#[event(version = "2")]
#[derive(Debug)]
pub struct Opened;

#[event(version = 1.5)]
#[derive(Debug)]
pub struct Closed;

fn main() {}
