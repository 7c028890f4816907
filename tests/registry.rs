//! The event registry: every `#[event]` is found by name and version, old versions
//! are upcast to the newest type.

#![allow(missing_docs)]

use eda::{registry, DecodeErrorKind, Event};
use eda_test::bank::{MoneyWithdrawn, MoneyWithdrawnV1};

#[test]
fn every_event_is_registered_with_its_type() {
    let r = registry();
    assert!(r.check().is_ok());
    let v1 = r.get("MoneyWithdrawn", 1).expect("v1 registered");
    let v2 = r.get("MoneyWithdrawn", 2).expect("v2 registered");
    assert!(
        v1.type_path.ends_with("bank::MoneyWithdrawnV1"),
        "{}",
        v1.type_path
    );
    assert!(
        v2.type_path.ends_with("bank::MoneyWithdrawn"),
        "{}",
        v2.type_path
    );
    assert_eq!(r.latest("MoneyWithdrawn").map(|e| e.version), Some(2));
    for name in ["AccountOpened", "MoneyDeposited"] {
        assert_eq!(r.latest(name).map(|e| e.version), Some(1), "{name}");
    }
    assert!(r.latest("Nope").is_none());
    assert!(r.iter().count() >= 4);
}

#[test]
fn old_versions_decode_into_the_newest_type() {
    let r = registry();
    let any = r.decode("MoneyWithdrawn", 1, r#"{"amount":5}"#).unwrap();
    let event = any.downcast::<MoneyWithdrawn>().expect("newest type");
    assert_eq!(
        *event,
        MoneyWithdrawn {
            amount: 5,
            reference: String::new()
        }
    );

    let any = r
        .decode("MoneyWithdrawn", 2, r#"{"amount":5,"reference":"r"}"#)
        .unwrap();
    assert_eq!(
        any.downcast_ref::<MoneyWithdrawn>()
            .map(|e| e.reference.as_str()),
        Some("r")
    );
}

#[test]
fn the_upcast_chain_is_typed() {
    assert_eq!(
        MoneyWithdrawn::decode(1, r#"{"amount":3}"#).unwrap().amount,
        3
    );
    assert!(matches!(
        MoneyWithdrawn::decode(3, "{}"),
        Err(DecodeErrorKind::NewerVersion { known: 2 })
    ));
    assert!(matches!(
        MoneyWithdrawnV1::decode(2, "{}"),
        Err(DecodeErrorKind::NewerVersion { known: 1 })
    ));
    assert!(matches!(
        MoneyWithdrawn::decode(0, "{}"),
        Err(DecodeErrorKind::NoUpcast { oldest: 1 })
    ));
    assert!(matches!(
        MoneyWithdrawn::decode(2, r#"{"amount":"x"}"#),
        Err(DecodeErrorKind::Payload(_))
    ));
}

#[test]
fn unknown_names_are_typed_errors() {
    assert!(matches!(
        registry().decode("Nope", 1, "{}"),
        Err(DecodeErrorKind::UnknownEvent)
    ));
}

#[test]
fn consumers_ignore_fields_they_do_not_declare() {
    // A smaller copy of an event, as another service would declare it.
    let any = registry()
        .decode(
            "AccountOpened",
            1,
            r#"{"owner":"ada","email":"a@example.com"}"#,
        )
        .unwrap();
    assert_eq!(
        any.downcast_ref::<eda_test::bank::AccountOpened>()
            .map(|e| e.owner.as_str()),
        Some("ada")
    );
}

mod chain {
    use eda::prelude::*;

    #[event(name = "PriceSet", version = 1)]
    #[derive(Debug)]
    pub struct PriceSetV1 {
        pub cents: u64,
    }

    #[event(name = "PriceSet", version = 2, upcast_from = PriceSetV1)]
    #[derive(Debug)]
    pub struct PriceSetV2 {
        pub cents: u64,
        pub currency: String,
    }

    #[event(name = "PriceSet", version = 3, upcast_from = PriceSetV2)]
    #[derive(Debug, PartialEq)]
    pub struct PriceSet {
        pub amount: String,
    }

    impl From<PriceSetV1> for PriceSetV2 {
        fn from(v1: PriceSetV1) -> Self {
            PriceSetV2 {
                cents: v1.cents,
                currency: "EUR".into(),
            }
        }
    }

    impl From<PriceSetV2> for PriceSet {
        fn from(v2: PriceSetV2) -> Self {
            PriceSet {
                amount: format!("{}.{:02} {}", v2.cents / 100, v2.cents % 100, v2.currency),
            }
        }
    }
}

#[test]
fn upcast_chains_run_every_step() {
    use chain::PriceSet;
    assert_eq!(
        PriceSet::decode(1, r#"{"cents":1250}"#).unwrap().amount,
        "12.50 EUR"
    );
    assert_eq!(
        PriceSet::decode(2, r#"{"cents":5,"currency":"USD"}"#)
            .unwrap()
            .amount,
        "0.05 USD"
    );
    assert_eq!(
        PriceSet::decode(3, r#"{"amount":"1 CHF"}"#).unwrap().amount,
        "1 CHF"
    );
    let any = registry()
        .decode("PriceSet", 1, r#"{"cents":100}"#)
        .unwrap();
    assert_eq!(
        any.downcast_ref::<PriceSet>().map(|p| p.amount.as_str()),
        Some("1.00 EUR")
    );
}
