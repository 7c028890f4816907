//! Compile-fail tests of every macro diagnostic (tests/ui/<macro>/<mistake>.rs with
//! the expected .stderr beside it) and inputs that must compile (tests/pass). The
//! cases that name PostgreSQL's driver are in tests/ui-postgres, built with the
//! `postgres` feature only. Regenerate expectations with
//! `TRYBUILD=overwrite cargo test --all-features --test ui`.

#![allow(missing_docs)]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*/*.rs");
    if cfg!(feature = "postgres") {
        t.compile_fail("tests/ui-postgres/*/*.rs");
    }
    t.pass("tests/pass/*.rs");
}
