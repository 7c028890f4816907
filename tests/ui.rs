//! Compile-fail tests of every macro diagnostic (tests/ui/<macro>/<mistake>.rs with
//! the expected .stderr beside it) and inputs that must compile (tests/pass).
//! Regenerate expectations with `TRYBUILD=overwrite cargo test --test ui`.

#![allow(missing_docs)]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*/*.rs");
    t.pass("tests/pass/*.rs");
}
