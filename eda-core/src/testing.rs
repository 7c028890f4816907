//! Given-when-then tests of an aggregate's rules, without a store.
//!
//! ```
//! use eda::prelude::*;
//! use eda::testing::Fixture;
//!
//! #[event]
//! #[derive(Debug)]
//! pub struct Opened { pub owner: String }
//!
//! #[command]
//! #[derive(Debug, Clone)]
//! pub struct Open { #[aggregate_id] pub id: String, pub owner: String }
//!
//! #[derive(Debug, Default)]
//! pub struct Account { open: bool }
//!
//! #[derive(Debug, PartialEq)]
//! pub enum AccountError { AlreadyOpen }
//!
//! #[aggregate(error = AccountError)]
//! impl Account {
//!     #[handle]
//!     fn open(&self, cmd: Open) -> Result<Opened, AccountError> {
//!         if self.open { return Err(AccountError::AlreadyOpen); }
//!         Ok(Opened { owner: cmd.owner })
//!     }
//!     #[apply]
//!     fn opened(&mut self, _: &Opened) { self.open = true; }
//! }
//!
//! let open = Open { id: "a".into(), owner: "ada".into() };
//! Fixture::<Account>::given(())
//!     .when(open.clone())
//!     .then_expect_events(Opened { owner: "ada".into() });
//! Fixture::<Account>::given(Opened { owner: "bob".into() })
//!     .when(open)
//!     .then_expect_error(AccountError::AlreadyOpen);
//! ```
//!
//! Handlers that take services get test doubles, and `async` handlers work too:
//!
//! ```
//! use eda::prelude::*;
//! use eda::testing::Fixture;
//!
//! #[event] #[derive(Debug)] pub struct Withdrawn { pub amount: u64 }
//! #[command] #[derive(Debug, Clone)]
//! pub struct Withdraw { #[aggregate_id] pub id: String, pub amount: u64 }
//! #[derive(Debug, PartialEq)] pub enum AccountError { AtmRefused }
//! #[derive(Debug, Default)] pub struct Account;
//!
//! pub trait Atm: Send + Sync { fn may_dispense(&self, amount: u64) -> bool; }
//! pub struct Bank { pub atm: Box<dyn Atm> }
//!
//! #[aggregate(error = AccountError, services = Bank)]
//! impl Account {
//!     #[handle]
//!     async fn withdraw(&self, cmd: Withdraw, bank: &Bank) -> Result<Withdrawn, AccountError> {
//!         if !bank.atm.may_dispense(cmd.amount) { return Err(AccountError::AtmRefused); }
//!         Ok(Withdrawn { amount: cmd.amount })
//!     }
//!     #[apply] fn withdrawn(&mut self, _: &Withdrawn) {}
//! }
//!
//! struct Empty;
//! impl Atm for Empty { fn may_dispense(&self, _: u64) -> bool { false } }
//!
//! Fixture::<Account>::given(())
//!     .with_services(Bank { atm: Box::new(Empty) })
//!     .when(Withdraw { id: "a".into(), amount: 20 })
//!     .then_expect_error(AccountError::AtmRefused);
//! ```

use std::fmt::{self, Write as _};

mod projection;

pub use projection::ProjectionFixture;
#[cfg(feature = "sqlite")]
pub use projection::SqliteProjectionFixture;

use serde_json::Value;

use crate::aggregate::{no_services, Aggregate, AggregateEvent, Handle, IntoEvents};

/// An aggregate brought to a state by past events, ready to receive one command.
pub struct Fixture<A: Aggregate> {
    state: A,
    services: Option<A::Services>,
}

impl<A: Aggregate + fmt::Debug> fmt::Debug for Fixture<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services = self
            .services
            .as_ref()
            .map(|_| std::any::type_name::<A::Services>());
        f.debug_struct("Fixture")
            .field("state", &self.state)
            .field("services", &services)
            .finish()
    }
}

/// The outcome of [`Fixture::when`], to assert on.
#[must_use = "a fixture asserts nothing until one of its `then_` methods is called"]
pub struct FixtureResult<A: Aggregate> {
    state: A,
    command: &'static str,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> fmt::Debug for FixtureResult<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixtureResult")
            .field("command", &self.command)
            .field("result", &self.result)
            .finish()
    }
}

impl<A: Aggregate> Fixture<A> {
    /// Starts from the state the given past events produce: one event, `Option`,
    /// `Vec`, a tuple of these or `()` for none (the forms a handler may return).
    /// For no past events write `given(())`: `vec![]` does not say which event
    /// type it would hold, so the compiler asks for annotations.
    pub fn given(events: impl IntoEvents<A::Event>) -> Self {
        let mut past = Vec::new();
        events.into_events(&mut past);
        let mut state = A::default();
        for event in &past {
            state.apply(event);
        }
        Fixture::given_state(state)
    }

    /// Starts from the given state instead of events.
    pub fn given_state(state: A) -> Self {
        Fixture {
            state,
            services: None,
        }
    }

    /// The services the handlers get, usually test doubles
    /// (`#[aggregate(services = Type)]`). Needed for an aggregate that declares
    /// services; one without needs nothing.
    pub fn with_services(mut self, services: A::Services) -> Self {
        self.services = Some(services);
        self
    }

    /// Lets the aggregate decide `command`.
    ///
    /// An `async` handler is run to completion on this thread, without a runtime:
    /// the services it awaits must not need one (no I/O reactor, no timers; test
    /// doubles that answer at once do). Use [`when_async`](Fixture::when_async) from
    /// an async test for doubles that need the test's runtime.
    ///
    /// # Panics
    /// When the aggregate declares services and none were given with
    /// [`with_services`](Fixture::with_services).
    #[track_caller]
    pub fn when<C>(self, command: C) -> FixtureResult<A>
    where
        C: crate::Command,
        A: Handle<C>,
    {
        let services = services_of::<A>(&self.services);
        let mut events = Vec::new();
        let decided = if <A as Handle<C>>::ASYNC {
            pollster::block_on(self.state.handle_async(command, services, &mut events))
        } else {
            self.state.handle(command, services, &mut events)
        };
        FixtureResult {
            state: self.state,
            command: C::NAME,
            result: decided.map(|()| events),
        }
    }

    /// As [`when`](Fixture::when), awaiting the handler on the caller's runtime,
    /// for services that need it (I/O, timers).
    ///
    /// # Panics
    /// When the aggregate declares services and none were given with
    /// [`with_services`](Fixture::with_services).
    pub async fn when_async<C>(self, command: C) -> FixtureResult<A>
    where
        C: crate::Command,
        A: Handle<C>,
    {
        let services = services_of::<A>(&self.services);
        let mut events = Vec::new();
        let decided = self
            .state
            .handle_async(command, services, &mut events)
            .await;
        FixtureResult {
            state: self.state,
            command: C::NAME,
            result: decided.map(|()| events),
        }
    }
}

/// The services a fixture's handler gets: the ones given, or `()`.
#[track_caller]
fn services_of<A: Aggregate>(given: &Option<A::Services>) -> &A::Services {
    match (given, no_services::<A>()) {
        (Some(services), _) => services,
        (None, Some(none)) => none,
        (None, None) => panic!(
            "`{}` declares `services = {}`, but the fixture has none: give test doubles with `Fixture::given(..).with_services(doubles)`",
            A::TYPE,
            std::any::type_name::<A::Services>()
        ),
    }
}

impl<A: Aggregate> FixtureResult<A> {
    /// Asserts that the command was accepted and produced exactly `expected`
    /// (compared by name, schema version and serialized payload, so events need no
    /// `PartialEq`). Every produced event must also survive a round trip through its
    /// stored form. Returns the state after applying the events.
    ///
    /// # Panics
    /// With a readable difference when the events differ or the command was rejected.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoEvents<A::Event>) -> A {
        let mut want = Vec::new();
        expected.into_events(&mut want);
        let mut actual = match self.result {
            Ok(events) => events,
            Err(e) => panic!(
                "command `{}` was rejected with {e:?}, but events were expected:\n{}",
                self.command,
                list(&want.iter().map(Shown::of).collect::<Vec<_>>())
            ),
        };
        for event in &mut actual {
            // The check `App` makes before storing (which may also replace an event
            // without `PartialEq` by what it reads back as).
            if let Err(problem) = crate::codec::encode_checked(event) {
                panic!(
                    "event `{}` produced by `{}` cannot be stored: {}",
                    event.name(),
                    self.command,
                    chain(&problem)
                );
            }
        }
        let want: Vec<Shown> = want.iter().map(Shown::of).collect();
        let got: Vec<Shown> = actual.iter().map(Shown::of).collect();
        if want != got {
            panic!("{}", difference(self.command, &want, &got));
        }
        let mut state = self.state;
        for event in &actual {
            state.apply(event);
        }
        state
    }

    /// Asserts that the command was accepted and produced no events (a no-op);
    /// the same as `then_expect_events(())` (`vec![]` cannot name its element
    /// type). Returns the state, unchanged.
    ///
    /// # Panics
    /// When the command was rejected or produced events.
    #[track_caller]
    pub fn then_expect_no_events(self) -> A {
        self.then_expect_events(())
    }

    /// Asserts that the command was rejected with `expected`.
    ///
    /// # Panics
    /// When the command was accepted or rejected with another error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Err(e) if e == expected => {}
            Err(e) => panic!(
                "command `{}` was rejected with the wrong error:\n  expected: {expected:?}\n    actual: {e:?}",
                self.command
            ),
            Ok(events) => panic!(
                "command `{}` was accepted, but error {expected:?} was expected; it produced:\n{}",
                self.command,
                list(&events.iter().map(Shown::of).collect::<Vec<_>>())
            ),
        }
    }

    /// Asserts that the command was rejected and passes the error to `check`.
    ///
    /// # Panics
    /// When the command was accepted.
    #[track_caller]
    pub fn then_expect_error_matches(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Err(e) => assert!(
                check(&e),
                "command `{}` was rejected with unexpected error {e:?}",
                self.command
            ),
            Ok(events) => panic!(
                "command `{}` was accepted, but an error was expected; it produced:\n{}",
                self.command,
                list(&events.iter().map(Shown::of).collect::<Vec<_>>())
            ),
        }
    }

    /// The raw outcome, for assertions of your own.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

/// An event as compared and printed: name, version and payload as JSON.
#[derive(PartialEq)]
struct Shown {
    name: &'static str,
    version: u32,
    payload: Value,
}

impl Shown {
    fn of<E: AggregateEvent>(event: &E) -> Shown {
        let payload = event
            .encode()
            .ok()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_else(|| Value::String(format!("<cannot serialize: {event:?}>")));
        Shown {
            name: event.name(),
            version: event.version(),
            payload,
        }
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{} {}", self.name, self.version, self.payload)
    }
}

fn list(events: &[Shown]) -> String {
    if events.is_empty() {
        return "    (no events)\n".to_owned();
    }
    events
        .iter()
        .enumerate()
        .fold(String::new(), |mut out, (i, e)| {
            let _ = writeln!(out, "    [{i}] {e}");
            out
        })
}

fn difference(command: &str, want: &[Shown], got: &[Shown]) -> String {
    let mut out = format!("command `{command}` produced other events than expected\n  expected:\n");
    out += &list(want);
    out += "  actual:\n";
    out += &list(got);
    if let Some(i) = (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i)) {
        match (want.get(i), got.get(i)) {
            (Some(w), Some(g)) if w.name == g.name && w.version == g.version => {
                let _ = write!(out, "  first difference at [{i}] ({}):", w.name);
                for (field, w, g) in field_differences(&w.payload, &g.payload) {
                    let _ = write!(out, "\n    {field}: expected {w}, actual {g}");
                }
            }
            (Some(w), Some(g)) => {
                let _ = write!(
                    out,
                    "  first difference at [{i}]: expected {}, actual {}",
                    w.name, g.name
                );
            }
            (Some(w), None) => {
                let _ = write!(out, "  missing from [{i}]: {}", w.name);
            }
            (None, Some(g)) => {
                let _ = write!(out, "  unexpected from [{i}]: {}", g.name);
            }
            (None, None) => {}
        }
    }
    out
}

fn field_differences(want: &Value, got: &Value) -> Vec<(String, String, String)> {
    let show = |v: Option<&Value>| v.map_or_else(|| "(absent)".to_owned(), Value::to_string);
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let mut keys: Vec<&String> = w.keys().chain(g.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| w.get(*k) != g.get(*k))
                .map(|k| (format!("`{k}`"), show(w.get(k)), show(g.get(k))))
                .collect()
        }
        _ => vec![("payload".to_owned(), want.to_string(), got.to_string())],
    }
}

/// An error and its sources, joined as error-chain printers show them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}
