use eda::prelude::*;

#[event]
pub union Bits {
    a: u32,
    b: f32,
}

fn main() {}
