use std::any::Any;
use std::borrow::Cow;
use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;

use crate::error::{DecodeErrorKind, EncodeError};

/// A consistency boundary: state rebuilt from its own events, deciding commands.
///
/// Implemented by `#[aggregate]` on the impl block that holds the `#[handle]` and
/// `#[apply]` methods. `apply` must be pure and infallible: replaying the same events
/// must always give the same state.
///
/// ```
/// use eda::prelude::*;
///
/// #[event]
/// #[derive(Debug)]
/// pub struct Incremented { pub by: u32 }
///
/// #[command]
/// #[derive(Debug, Clone)]
/// pub struct Increment { #[aggregate_id] pub id: String, pub by: u32 }
///
/// #[derive(Debug, Default)]
/// pub struct Counter { total: u64 }
///
/// #[derive(Debug, PartialEq)]
/// pub enum CounterError { Zero }
///
/// #[aggregate(error = CounterError)]
/// impl Counter {
///     #[handle]
///     fn increment(&self, cmd: Increment) -> Result<Incremented, CounterError> {
///         if cmd.by == 0 { return Err(CounterError::Zero); }
///         Ok(Incremented { by: cmd.by })
///     }
///     #[apply]
///     fn incremented(&mut self, e: &Incremented) { self.total += u64::from(e.by); }
/// }
///
/// assert_eq!(<Counter as Aggregate>::TYPE, "Counter");
/// let mut counter = Counter::default();
/// counter.apply(&CounterEvent::from(Incremented { by: 2 }));
/// assert_eq!(counter.total, 2);
/// ```
pub trait Aggregate: Default + Send + 'static {
    /// Aggregate type name recorded in the store (`#[aggregate(name = "...")]`).
    const TYPE: &'static str;
    /// Identifier of one instance (`#[aggregate(id = Type)]`, `String` by default).
    type Id: AggregateId;
    /// The generated enum of every event this aggregate applies.
    type Event: AggregateEvent;
    /// The domain error its handlers reject commands with.
    type Error: Debug + Send + 'static;
    /// What its handlers may consult while deciding (`#[aggregate(services = Type)]`,
    /// `()` by default): clients of other systems, validators, clocks. One value per
    /// type is given to [`AppBuilder::services`](crate::AppBuilder::services) and
    /// shared by every aggregate that declares that type.
    type Services: Send + Sync + 'static;

    /// Take a snapshot every this many events (`#[aggregate(snapshot_every = N)]`);
    /// 0, the default, takes none.
    const SNAPSHOT_EVERY: u64 = 0;
    /// Version of the snapshot format (`#[aggregate(snapshot_version = N)]`, 1 by
    /// default). Change it when the state's meaning changes: older snapshots are
    /// then ignored and the aggregate is replayed from its events.
    const SNAPSHOT_VERSION: u32 = 1;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// The state as a snapshot payload; `None` when the aggregate takes no snapshots.
    fn encode_snapshot(&self) -> Option<Result<String, EncodeError>> {
        None
    }

    /// A state from a snapshot payload; `None` when the aggregate takes no snapshots.
    fn decode_snapshot(payload: &str) -> Option<Result<Self, serde_json::Error>> {
        let _ = payload;
        None
    }
}

/// Decides command `C` for an aggregate: implemented by `#[aggregate]` per `#[handle]`.
///
/// A handler may take the aggregate's services as a third argument and may be
/// `async`. A sync handler implements [`handle`](Handle::handle), and
/// [`handle_async`](Handle::handle_async) wraps it in a ready future; an async handler
/// sets [`ASYNC`](Handle::ASYNC) and implements `handle_async` only. Callers that
/// can await call `handle_async`; `App` calls `handle` when `ASYNC` is `false`, which
/// keeps sync handlers off the heap and out of any executor.
///
/// ```
/// use eda::prelude::*;
/// use eda::Handle;
///
/// #[event] #[derive(Debug)] pub struct Opened;
/// #[command] #[derive(Debug, Clone)] pub struct Open { #[aggregate_id] pub id: String }
/// #[derive(Debug, Default)] pub struct Account { open: bool }
/// #[derive(Debug)] pub enum AccountError { AlreadyOpen, Blocked }
///
/// /// Asked before an account is opened.
/// pub struct Sanctions { pub blocked: Vec<String> }
///
/// #[aggregate(error = AccountError, services = Sanctions)]
/// impl Account {
///     #[handle]
///     async fn open(&self, cmd: Open, sanctions: &Sanctions) -> Result<Opened, AccountError> {
///         if self.open { return Err(AccountError::AlreadyOpen); }
///         if sanctions.blocked.contains(&cmd.id) { return Err(AccountError::Blocked); }
///         Ok(Opened)
///     }
///     #[apply] fn opened(&mut self, _: &Opened) { self.open = true; }
/// }
///
/// assert!(<Account as Handle<Open>>::ASYNC);
/// let sanctions = Sanctions { blocked: vec!["b".into()] };
/// let account = Account::default();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut events = Vec::new();
/// account.handle_async(Open { id: "a".into() }, &sanctions, &mut events).await.unwrap();
/// assert!(matches!(events.as_slice(), [AccountEvent::Opened(_)]));
/// let refused = account.handle_async(Open { id: "b".into() }, &sanctions, &mut events).await;
/// assert!(matches!(refused, Err(AccountError::Blocked)));
/// # });
/// ```
pub trait Handle<C>: Aggregate {
    /// Whether the handler is `async`: then only [`handle_async`](Handle::handle_async)
    /// decides, and [`handle`](Handle::handle) must not be called.
    const ASYNC: bool = false;

    /// Checks the rules against the current state and pushes the resulting events.
    ///
    /// # Panics
    /// When the handler is `async` ([`ASYNC`](Handle::ASYNC) is `true`): call
    /// `handle_async` instead. eda never calls it then.
    fn handle(
        &self,
        command: C,
        services: &Self::Services,
        events: &mut Vec<Self::Event>,
    ) -> Result<(), Self::Error>;

    /// As [`handle`](Handle::handle), for sync and async handlers alike.
    fn handle_async<'a>(
        &'a self,
        command: C,
        services: &'a Self::Services,
        events: &'a mut Vec<Self::Event>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'a
    where
        C: 'a,
    {
        std::future::ready(self.handle(command, services, events))
    }
}

/// `&()` as `A`'s services when `A` declares none: a comparison of type ids, which
/// the compiler resolves, instead of a look-up.
pub(crate) fn no_services<A: Aggregate>() -> Option<&'static A::Services> {
    (&() as &dyn Any).downcast_ref()
}

/// What an aggregate id must be: the store keys streams by its `Display` form.
pub trait AggregateId: Clone + Debug + Display + Eq + Hash + Send + Sync + 'static {}

impl<T: Clone + Debug + Display + Eq + Hash + Send + Sync + 'static> AggregateId for T {}

/// The stream key of an id: borrowed for `String` ids (the common case on the
/// command path), formatted otherwise.
pub(crate) fn stream_key<I: AggregateId>(id: &I) -> Cow<'_, str> {
    match (id as &dyn Any).downcast_ref::<String>() {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(id.to_string()),
    }
}

/// The enum of an aggregate's events, generated by `#[aggregate]` as `<Aggregate>Event`.
///
/// ```
/// use eda::prelude::*;
///
/// #[event(name = "bank.Deposited", version = 2)]
/// #[derive(Debug)]
/// pub struct Deposited { pub amount: u64 }
/// #[derive(Debug, Default)] pub struct Account;
/// #[aggregate]
/// impl Account { #[apply] fn deposited(&mut self, _: &Deposited) {} }
///
/// let event = AccountEvent::from(Deposited { amount: 5 });
/// assert_eq!((event.name(), event.version()), ("bank.Deposited", 2));
/// assert_eq!(event.encode().unwrap(), r#"{"amount":5}"#);
/// let back = AccountEvent::decode("bank.Deposited", 2, r#"{"amount":5}"#).unwrap();
/// assert!(matches!(back, AccountEvent::Deposited(Deposited { amount: 5 })));
/// ```
pub trait AggregateEvent: Debug + Send + Sync + Sized + 'static {
    /// Stored name of the event inside.
    fn name(&self) -> &'static str;
    /// Schema version of the event inside.
    fn version(&self) -> u32;
    /// Serializes the event inside as its stored payload (JSON); NaN and the
    /// infinities, which JSON cannot represent, are refused.
    fn encode(&self) -> Result<String, EncodeError>;
    /// Decodes a stored payload by name and schema version, upcasting old versions.
    fn decode(name: &str, version: u32, payload: &str) -> Result<Self, DecodeErrorKind>;
    /// `Some(self == other)` when the event inside implements `PartialEq` (and both
    /// are the same event type), `None` when it does not.
    #[doc(hidden)]
    fn same_value(&self, other: &Self) -> Option<bool> {
        let _ = other;
        None
    }
}

/// Values that become a list of events `E`: one event, `Option`, `Vec`, tuples of
/// up to 8 of these, or `()`. Handlers return these forms, and
/// [`Fixture`](crate::testing::Fixture) accepts them.
///
/// ```
/// use eda::prelude::*;
/// use eda::IntoEvents;
///
/// #[event] #[derive(Debug)] pub struct Opened;
/// #[event] #[derive(Debug)] pub struct Noted;
/// #[derive(Debug, Default)] pub struct Account;
/// #[aggregate]
/// impl Account {
///     #[apply] fn opened(&mut self, _: &Opened) {}
///     #[apply] fn noted(&mut self, _: &Noted) {}
/// }
///
/// let mut events: Vec<AccountEvent> = Vec::new();
/// (Opened, Some(Noted), vec![Noted, Noted], ()).into_events(&mut events);
/// assert_eq!(events.len(), 4);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event of the aggregate whose events are `{E}`",
    label = "no `#[apply]` method takes this event",
    note = "an aggregate accepts the events it has an `#[apply]` method for, and `Option`, `Vec`, tuples and `()` of them"
)]
pub trait IntoEvents<E> {
    /// Appends the events to `out`, in order.
    fn into_events(self, out: &mut Vec<E>);
}

impl<E> IntoEvents<E> for () {
    fn into_events(self, _: &mut Vec<E>) {}
}

impl<E, T: IntoEvents<E>> IntoEvents<E> for Option<T> {
    fn into_events(self, out: &mut Vec<E>) {
        if let Some(events) = self {
            events.into_events(out);
        }
    }
}

impl<E, T: IntoEvents<E>> IntoEvents<E> for Vec<T> {
    fn into_events(self, out: &mut Vec<E>) {
        for events in self {
            events.into_events(out);
        }
    }
}

macro_rules! tuple_into_events {
    ($($t:ident),+) => {
        impl<E, $($t: IntoEvents<E>),+> IntoEvents<E> for ($($t,)+) {
            #[allow(non_snake_case)]
            fn into_events(self, out: &mut Vec<E>) {
                let ($($t,)+) = self;
                $($t.into_events(out);)+
            }
        }
    };
}

tuple_into_events!(A);
tuple_into_events!(A, B);
tuple_into_events!(A, B, C);
tuple_into_events!(A, B, C, D);
tuple_into_events!(A, B, C, D, F);
tuple_into_events!(A, B, C, D, F, G);
tuple_into_events!(A, B, C, D, F, G, H);
tuple_into_events!(A, B, C, D, F, G, H, I);

/// What `#[aggregate(snapshot_every = N)]` needs of the aggregate's state.
#[diagnostic::on_unimplemented(
    message = "`#[aggregate(snapshot_every = ..)]` needs `{Self}` to derive `Serialize` and `Deserialize`",
    label = "snapshots of `{Self}` are stored as JSON",
    note = "add `#[derive(eda::serde::Serialize, eda::serde::Deserialize)]` and `#[serde(crate = \"eda::serde\")]` to `{Self}`"
)]
pub trait SnapshotState: serde::Serialize + serde::de::DeserializeOwned {}

impl<T: serde::Serialize + serde::de::DeserializeOwned> SnapshotState for T {}

/// How an aggregate's state becomes a snapshot payload and back.
pub struct SnapshotCodec<S> {
    /// The state as JSON.
    pub encode: fn(&S) -> Result<String, EncodeError>,
    /// A state from JSON.
    pub decode: fn(&str) -> Result<S, serde_json::Error>,
}

/// The codec of `S`: the one place the macro asks for `S`'s serde impls, so a
/// missing derive is reported once.
pub const fn snapshot_codec<S: SnapshotState>() -> SnapshotCodec<S> {
    SnapshotCodec {
        encode: |state| crate::codec::to_json(state),
        decode: |payload| serde_json::from_str(payload),
    }
}

/// Satisfied when a handler's services argument is the aggregate's services type.
#[diagnostic::on_unimplemented(
    message = "this #[handle] method takes `&{Arg}`, but the aggregate's services are `{Self}`",
    label = "expected `&{Self}` here",
    note = "a handler takes the services declared by `#[aggregate(services = ..)]`, by shared reference"
)]
pub trait ServicesMatch<Arg> {
    /// The services, as the handler's argument type.
    fn as_arg(&self) -> &Arg;
}

impl<T> ServicesMatch<T> for T {
    fn as_arg(&self) -> &T {
        self
    }
}

/// The aggregate's services as the type a handler's argument names.
pub fn services_arg<Arg, S: ServicesMatch<Arg>>(services: &S) -> &Arg {
    services.as_arg()
}

/// The body of `Handle::handle` for an async handler, which eda never calls
/// (it checks `Handle::ASYNC` first).
#[track_caller]
pub fn sync_call_of_async_handler<T>(aggregate: &'static str, method: &'static str) -> T {
    panic!("`{aggregate}::{method}` is an async #[handle] method: call `Handle::handle_async`, not `Handle::handle`")
}
