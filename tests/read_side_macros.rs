//! What `#[projection]` generates for a SQLite read model and what `#[policy]`
//! generates, called directly as their runners call them: rows written through a
//! real transaction, a handler's error and an undecodable payload told apart,
//! the `#[reset]` method (and its absence), commands of every return shape
//! collected, and other events ignored.

#![allow(missing_docs)]

use eda::prelude::*;
use eda::rusqlite::{self, Connection};
use eda::{
    new_event_id, read_model, ApplyError, Metadata, Policy, Projection, Reactions, RecordedEvent,
    SqliteProjection,
};
use eda_test::bank::{
    AccountOpened, DepositMoney, MoneyDeposited, MoneyWithdrawn, OpenAccount, WithdrawMoney,
};
use eda_test::tally::{Add, Added};

/// `event` as a store would hand it over: the `position`th event of the log, of the
/// account `account`.
fn recorded<E: Event>(account: &str, position: u64, event: &E) -> RecordedEvent {
    RecordedEvent {
        event_id: new_event_id(),
        aggregate_type: "Account".into(),
        aggregate_id: account.into(),
        version: position,
        position,
        name: E::NAME.into(),
        event_version: E::VERSION,
        payload: serde_json::to_string(event).unwrap(),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    }
}

/// A stored event of `name` whose payload none of its versions can read.
fn undecodable(name: &str) -> RecordedEvent {
    let mut event = recorded("a", 1, &MoneyDeposited { amount: 1 });
    event.name = name.into();
    event.payload = r#"{"amount":"lots"}"#.into();
    event
}

/// A handler's own error type.
#[derive(Debug, thiserror::Error)]
#[error("no account `{0}`")]
pub struct NoAccount(String);

/// Balances in a table, with the recorded event; the value counts the calls.
#[derive(Debug, Default)]
pub struct BalanceTable {
    calls: usize,
}

#[projection(name = "balance_table", version = 3)]
impl BalanceTable {
    /// Empties the table; refuses to while `calls` is 99.
    #[reset]
    fn clear(&mut self, tx: &eda::rusqlite::Transaction<'_>) -> Result<(), NoAccount> {
        if self.calls == 99 {
            return Err(NoAccount("99".into()));
        }
        self.calls = 0;
        tx.execute("DELETE FROM balances", []).unwrap();
        Ok(())
    }

    #[on]
    fn opened(
        &mut self,
        _: &AccountOpened,
        recorded: &RecordedEvent,
        tx: &rusqlite::Transaction<'_>,
    ) -> rusqlite::Result<()> {
        self.calls += 1;
        tx.execute(
            "INSERT INTO balances (account, amount) VALUES (?1, 0)",
            [&recorded.aggregate_id],
        )?;
        Ok(())
    }

    #[on]
    fn deposited(
        &mut self,
        e: &MoneyDeposited,
        recorded: &RecordedEvent,
        tx: &eda::rusqlite::Transaction<'_>,
    ) -> Result<(), NoAccount> {
        self.calls += 1;
        let changed = tx
            .execute(
                "UPDATE balances SET amount = amount + ?1 WHERE account = ?2",
                (e.amount as i64, &recorded.aggregate_id),
            )
            .unwrap();
        match changed {
            0 => Err(NoAccount(recorded.aggregate_id.clone())),
            _ => Ok(()),
        }
    }
}

/// Deposits in a table, without the recorded event.
#[derive(Debug, Default)]
pub struct DepositLog;

#[projection]
impl DepositLog {
    #[on]
    fn deposited(
        &mut self,
        e: &MoneyDeposited,
        tx: &rusqlite::Transaction<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        tx.execute(
            "INSERT INTO deposits (amount) VALUES (?1)",
            [e.amount as i64],
        )?;
        Ok(())
    }
}

fn database() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE balances (account TEXT PRIMARY KEY, amount INTEGER NOT NULL);
         CREATE TABLE deposits (amount INTEGER NOT NULL);",
    )
    .unwrap();
    conn
}

fn balances(conn: &Connection) -> Vec<(String, i64)> {
    let mut query = conn
        .prepare("SELECT account, amount FROM balances ORDER BY account")
        .unwrap();
    let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)));
    rows.unwrap().map(Result::unwrap).collect()
}

/// Compiles only for a projection of the SQLite kind.
fn sqlite_kind<P: Projection<Kind = read_model::Sqlite>>() {}

#[test]
fn a_sqlite_projection_names_its_kind_and_events() {
    sqlite_kind::<BalanceTable>();
    sqlite_kind::<DepositLog>();
    assert_eq!(BalanceTable::NAME, "balance_table");
    assert_eq!(BalanceTable::VERSION, 3);
    assert_eq!(BalanceTable::EVENTS, ["AccountOpened", "MoneyDeposited"]);
    assert_eq!(
        (DepositLog::NAME, DepositLog::VERSION, DepositLog::EVENTS),
        ("DepositLog", 1, &["MoneyDeposited"][..])
    );
}

#[test]
fn on_methods_write_in_the_transaction_they_are_given() {
    let mut conn = database();
    let mut table = BalanceTable::default();
    let mut log = DepositLog;
    let tx = conn.transaction().unwrap();
    let opened = recorded(
        "a",
        1,
        &AccountOpened {
            owner: "ada".into(),
        },
    );
    let deposited = recorded("a", 2, &MoneyDeposited { amount: 30 });
    table.apply(&opened, &tx).unwrap();
    table.apply(&deposited, &tx).unwrap();
    log.apply(&deposited, &tx).unwrap();
    log.apply(&recorded("a", 3, &MoneyDeposited { amount: 12 }), &tx)
        .unwrap();
    tx.commit().unwrap();

    assert_eq!(balances(&conn), [("a".to_string(), 30)]);
    let deposits: i64 = conn
        .query_row("SELECT SUM(amount) FROM deposits", [], |row| row.get(0))
        .unwrap();
    assert_eq!(deposits, 42);
    assert_eq!(table.calls, 2);
}

#[test]
fn the_reset_method_empties_the_read_model_in_the_transaction() {
    const { assert!(<BalanceTable as SqliteProjection>::RESETS) };
    const { assert!(!<DepositLog as SqliteProjection>::RESETS) };
    let mut conn = database();
    let mut table = BalanceTable::default();
    let tx = conn.transaction().unwrap();
    let opened = AccountOpened {
        owner: "ada".into(),
    };
    table.apply(&recorded("a", 1, &opened), &tx).unwrap();
    table.reset(&tx).unwrap();
    assert_eq!(table.calls, 0);
    tx.commit().unwrap();
    assert!(balances(&conn).is_empty());

    // Its error, boxed as it was returned; and none without a #[reset] method.
    let tx = conn.transaction().unwrap();
    table.calls = 99;
    let error = table.reset(&tx).unwrap_err();
    assert!(error.downcast_ref::<NoAccount>().is_some(), "{error}");
    let error = DepositLog.reset(&tx).unwrap_err();
    assert_eq!(error.to_string(), "`DepositLog` has no #[reset] method");
}

#[test]
fn a_handler_error_is_apply_error_handler() {
    let mut conn = database();
    let tx = conn.transaction().unwrap();
    let error = BalanceTable::default()
        .apply(&recorded("nobody", 1, &MoneyDeposited { amount: 5 }), &tx)
        .unwrap_err();
    let ApplyError::Handler(source) = &error else {
        panic!("expected ApplyError::Handler, got {error:?}");
    };
    assert_eq!(source.to_string(), "no account `nobody`");
    assert!(source.downcast_ref::<NoAccount>().is_some());

    // rusqlite's own error, through `?` in the handler.
    let error = BalanceTable::default()
        .apply(
            &recorded(
                "a",
                1,
                &AccountOpened {
                    owner: "ada".into(),
                },
            ),
            &tx,
        )
        .and_then(|()| {
            BalanceTable::default().apply(
                &recorded(
                    "a",
                    2,
                    &AccountOpened {
                        owner: "ada".into(),
                    },
                ),
                &tx,
            )
        })
        .unwrap_err();
    let ApplyError::Handler(source) = &error else {
        panic!("expected ApplyError::Handler, got {error:?}");
    };
    assert!(
        source.downcast_ref::<rusqlite::Error>().is_some(),
        "{source}"
    );
}

#[test]
fn an_undecodable_payload_is_apply_error_decode_and_calls_nothing() {
    let mut conn = database();
    let tx = conn.transaction().unwrap();
    let mut table = BalanceTable::default();
    let error = table
        .apply(&undecodable("MoneyDeposited"), &tx)
        .unwrap_err();
    assert!(matches!(error, ApplyError::Decode(_)), "{error:?}");
    assert_eq!(table.calls, 0);
    let error = DepositLog
        .apply(&undecodable("MoneyDeposited"), &tx)
        .unwrap_err();
    assert!(matches!(error, ApplyError::Decode(_)), "{error:?}");
}

#[test]
fn a_sqlite_projection_ignores_other_events() {
    let mut conn = database();
    let tx = conn.transaction().unwrap();
    let mut table = BalanceTable::default();
    let withdrawn = MoneyWithdrawn {
        amount: 1,
        reference: "r".into(),
    };
    table.apply(&recorded("a", 1, &withdrawn), &tx).unwrap();
    table.apply(&undecodable("SomethingElse"), &tx).unwrap();
    DepositLog
        .apply(
            &recorded(
                "a",
                2,
                &AccountOpened {
                    owner: "ada".into(),
                },
            ),
            &tx,
        )
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(table.calls, 0);
    assert!(balances(&conn).is_empty());
}

/// Reacts to the bank's events and the tally's with every return shape.
#[derive(Debug, Default)]
pub struct Reactor;

#[policy(name = "reactor")]
impl Reactor {
    /// `Option<C>`: a welcome deposit, except for the bank's own accounts.
    #[on]
    fn opened(&self, e: &AccountOpened, recorded: &RecordedEvent) -> Option<DepositMoney> {
        (e.owner != "bank").then(|| DepositMoney {
            account: recorded.aggregate_id.clone(),
            amount: 10,
        })
    }

    /// `Vec<C>`: one withdrawal of 1 per unit deposited.
    #[on]
    fn deposited(&self, e: &MoneyDeposited, recorded: &RecordedEvent) -> Vec<WithdrawMoney> {
        (0..e.amount)
            .map(|i| WithdrawMoney {
                account: recorded.aggregate_id.clone(),
                amount: 1,
                reference: format!("unit {i}"),
            })
            .collect()
    }

    /// A tuple: a new account, and a deposit into it if the withdrawal had a reference.
    #[on]
    fn withdrawn(&self, e: &MoneyWithdrawn) -> (OpenAccount, Option<DepositMoney>) {
        let account = format!("after-{}", e.reference);
        let deposit = (!e.reference.is_empty()).then(|| DepositMoney {
            account: account.clone(),
            amount: e.amount,
        });
        let open = OpenAccount {
            account,
            owner: "bank".into(),
        };
        (open, deposit)
    }

    /// `C`: the same again.
    #[on]
    fn added(&self, e: &Added) -> Add {
        Add {
            id: "echo".into(),
            n: e.n,
        }
    }
}

/// The commands `Reactor` returns for `event`, by name.
fn reactions(event: &RecordedEvent) -> Vec<String> {
    let mut reactions = Reactions::default();
    Reactor.react(event, &mut reactions).unwrap();
    let names = format!("{reactions:?}");
    let names: Vec<String> = names
        .trim_matches(['[', ']'])
        .split(", ")
        .filter(|name| !name.is_empty())
        .map(|name| name.trim_matches('"').to_owned())
        .collect();
    assert_eq!(names.len(), reactions.len());
    names
}

#[test]
fn a_policy_names_its_events() {
    assert_eq!(Reactor::NAME, "reactor");
    assert_eq!(
        Reactor::EVENTS,
        ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "Added"]
    );
}

#[test]
fn a_policy_collects_the_commands_of_every_return_shape() {
    let opened = |owner: &str| {
        recorded(
            "a",
            1,
            &AccountOpened {
                owner: owner.into(),
            },
        )
    };
    assert_eq!(reactions(&opened("ada")), ["DepositMoney"]);
    assert_eq!(reactions(&opened("bank")), Vec::<String>::new());

    assert_eq!(
        reactions(&recorded("a", 2, &MoneyDeposited { amount: 3 })).len(),
        3
    );
    assert!(reactions(&recorded("a", 2, &MoneyDeposited { amount: 0 })).is_empty());

    let withdrawn = |reference: &str| MoneyWithdrawn {
        amount: 5,
        reference: reference.into(),
    };
    assert_eq!(
        reactions(&recorded("a", 3, &withdrawn("rent"))),
        ["OpenAccount", "DepositMoney"]
    );
    assert_eq!(
        reactions(&recorded("a", 3, &withdrawn(""))),
        ["OpenAccount"]
    );

    assert_eq!(reactions(&recorded("t", 1, &Added { n: 2 })), ["Add"]);
}

#[test]
fn a_policy_ignores_other_events_and_reports_undecodable_ones() {
    assert!(reactions(&undecodable("SomethingElse")).is_empty());
    let mut reactions = Reactions::default();
    assert!(Reactor
        .react(&undecodable("MoneyDeposited"), &mut reactions)
        .is_err());
    assert!(reactions.is_empty());
}

/// Returns `impl IntoReactions`, which names no type for the macro to check.
#[derive(Debug, Default)]
pub struct Opaque;

#[policy]
impl Opaque {
    #[on]
    fn added(&self, e: &Added) -> impl eda::IntoReactions {
        (0..e.n)
            .map(|i| Add {
                id: format!("t-{i}"),
                n: 1,
            })
            .collect::<Vec<_>>()
    }
}

#[test]
fn a_policy_may_return_impl_into_reactions() {
    let mut reactions = Reactions::default();
    Opaque
        .react(&recorded("t", 1, &Added { n: 2 }), &mut reactions)
        .unwrap();
    assert_eq!(reactions.len(), 2);
}
