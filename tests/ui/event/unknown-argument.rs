use eda::prelude::*;

#[event(nmae = "Opened", version = 1)]
#[derive(Debug)]
pub struct Opened;

fn main() {}
