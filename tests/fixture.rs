//! `Fixture`: given-when-then tests of rules, and the messages it fails with.

#![allow(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use eda::testing::Fixture;
use eda_test::bank::{
    Account, AccountError, AccountOpened, DepositMoney, MoneyDeposited, MoneyWithdrawn,
    WithdrawMoney,
};

fn opened() -> AccountOpened {
    AccountOpened {
        owner: "ada".into(),
    }
}

fn withdraw(amount: u64) -> WithdrawMoney {
    WithdrawMoney {
        account: "a".into(),
        amount,
        reference: "r".into(),
    }
}

fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("the assertion should fail");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap()
}

#[test]
fn accepted_command_and_resulting_state() {
    let state = Fixture::<Account>::given((opened(), MoneyDeposited { amount: 50 }))
        .when(withdraw(20))
        .then_expect_events(MoneyWithdrawn {
            amount: 20,
            reference: "r".into(),
        });
    assert_eq!(state.balance, 30);
}

#[test]
fn rejected_command() {
    Fixture::<Account>::given(opened())
        .when(withdraw(1))
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 0,
            requested: 1,
        });
    Fixture::<Account>::given(())
        .when(DepositMoney {
            account: "a".into(),
            amount: 1,
        })
        .then_expect_error_matches(|e| *e == AccountError::NotOpen);
}

#[test]
fn given_state_and_raw_result() {
    let state = Account {
        owner: Some("ada".into()),
        balance: 5,
    };
    let result = Fixture::given_state(state)
        .when(withdraw(5))
        .into_result()
        .unwrap();
    assert_eq!(result.len(), 1);
}

#[test]
fn different_events_fail_with_a_field_level_difference() {
    let message = panic_message(|| {
        Fixture::<Account>::given((opened(), MoneyDeposited { amount: 50 }))
            .when(withdraw(20))
            .then_expect_events(MoneyWithdrawn {
                amount: 21,
                reference: "r".into(),
            });
    });
    assert!(
        message.contains("command `WithdrawMoney` produced other events than expected"),
        "{message}"
    );
    assert!(
        message.contains(r#"[0] MoneyWithdrawn v2 {"amount":21,"reference":"r"}"#),
        "{message}"
    );
    assert!(
        message.contains(r#"[0] MoneyWithdrawn v2 {"amount":20,"reference":"r"}"#),
        "{message}"
    );
    assert!(
        message.contains("`amount`: expected 21, actual 20"),
        "{message}"
    );
}

#[test]
fn missing_and_extra_events_are_named() {
    let message = panic_message(|| {
        Fixture::<Account>::given((opened(), MoneyDeposited { amount: 50 }))
            .when(withdraw(20))
            .then_expect_events(());
    });
    assert!(message.contains("(no events)"), "{message}");
    assert!(
        message.contains("unexpected from [0]: MoneyWithdrawn"),
        "{message}"
    );
}

#[test]
fn a_rejection_when_events_were_expected_shows_the_error() {
    let message = panic_message(|| {
        Fixture::<Account>::given(opened())
            .when(withdraw(20))
            .then_expect_events(MoneyDeposited { amount: 1 });
    });
    assert!(
        message.contains("was rejected with InsufficientFunds"),
        "{message}"
    );
    assert!(message.contains("MoneyDeposited v1"), "{message}");
}

#[test]
fn the_wrong_error_and_an_unexpected_success_fail() {
    let message = panic_message(|| {
        Fixture::<Account>::given(())
            .when(withdraw(1))
            .then_expect_error(AccountError::ZeroAmount);
    });
    assert!(message.contains("expected: ZeroAmount"), "{message}");
    assert!(message.contains("actual: NotOpen"), "{message}");

    let message = panic_message(|| {
        Fixture::<Account>::given((opened(), MoneyDeposited { amount: 1 }))
            .when(withdraw(1))
            .then_expect_error(AccountError::ZeroAmount);
    });
    assert!(
        message.contains("was accepted, but error ZeroAmount was expected"),
        "{message}"
    );
}

#[test]
fn events_that_lose_data_in_their_stored_form_fail_the_fixture() {
    mod lossy {
        use eda::prelude::*;

        #[event]
        #[derive(Debug, PartialEq)]
        pub struct Tagged {
            pub id: u32,
            #[serde(skip)]
            pub tag: String,
        }

        #[command]
        #[derive(Debug, Clone)]
        pub struct Tag {
            #[aggregate_id]
            pub id: String,
        }

        #[derive(Debug, Default)]
        pub struct Item;

        #[aggregate(error = std::convert::Infallible)]
        impl Item {
            #[handle]
            fn tag(&self, _: Tag) -> Result<Tagged, std::convert::Infallible> {
                Ok(Tagged {
                    id: 1,
                    tag: "red".into(),
                })
            }
            #[apply]
            fn tagged(&mut self, e: &Tagged) {
                let _ = (e.id, &e.tag);
            }
        }
    }
    let message = panic_message(|| {
        Fixture::<lossy::Item>::given(())
            .when(lossy::Tag { id: "i".into() })
            .then_expect_events(lossy::Tagged {
                id: 1,
                tag: "red".into(),
            });
    });
    assert!(
        message.contains("event `Tagged` produced by `Tag` cannot be stored"),
        "{message}"
    );
    assert!(
        message.contains(
            r#"its stored form {"id":1} reads back as Tagged(Tagged { id: 1, tag: "" })"#
        ),
        "{message}"
    );
}

/// A no-op is asserted without naming an event type (`vec![]` cannot).
#[test]
fn a_no_op_is_expected_with_no_events() {
    mod noop {
        use eda::prelude::*;

        #[event]
        #[derive(Debug)]
        pub struct Renamed {
            pub name: String,
        }

        #[command]
        #[derive(Debug, Clone)]
        pub struct Rename {
            #[aggregate_id]
            pub id: String,
            pub name: String,
        }

        #[derive(Debug, Default)]
        pub struct Item {
            pub name: String,
        }

        #[aggregate(error = std::convert::Infallible)]
        impl Item {
            #[handle]
            fn rename(&self, cmd: Rename) -> Result<Option<Renamed>, std::convert::Infallible> {
                Ok((cmd.name != self.name).then_some(Renamed { name: cmd.name }))
            }
            #[apply]
            fn renamed(&mut self, e: &Renamed) {
                self.name = e.name.clone();
            }
        }
    }
    let rename = |name: &str| noop::Rename {
        id: "i".into(),
        name: name.into(),
    };
    let item = Fixture::<noop::Item>::given(noop::Renamed { name: "a".into() })
        .when(rename("a"))
        .then_expect_no_events();
    assert_eq!(item.name, "a");
    let message = panic_message(|| {
        Fixture::<noop::Item>::given(())
            .when(rename("b"))
            .then_expect_no_events();
    });
    assert!(
        message.contains("unexpected from [0]: Renamed"),
        "{message}"
    );
}
