//! The only contract between the macros and the runtime. Not public API.

use std::any::Any;

pub use inventory;
pub use serde;
pub use serde_json;

pub use crate::aggregate::{Aggregate, AggregateEvent, Handle, IntoEvents};
pub use crate::codec::{Probe, ViaPartialEq, WithoutPartialEq};
pub use crate::command::{Command, HandledCommand};
pub use crate::error::{DecodeErrorKind, EncodeError};
pub use crate::event::{decode_upcast, Event};
pub use crate::registry::EventRegistration;

/// The registry's type-erased decoder for `E`.
pub fn decode_boxed<E: Event>(
    version: u32,
    payload: &str,
) -> Result<Box<dyn Any + Send>, DecodeErrorKind> {
    E::decode(version, payload).map(|e| Box::new(e) as Box<dyn Any + Send>)
}

/// Serializes one event as its stored payload, refusing non-finite floats.
pub fn encode<E: Event>(event: &E) -> Result<String, EncodeError> {
    crate::codec::to_json(event)
}

pub use uuid::Uuid;

/// The fingerprint of a command's fields (see [`Command::fingerprint`]): a UUIDv5
/// of their JSON form with object keys sorted. `None` when they do not serialize.
pub fn fingerprint<T: serde::Serialize>(fields: &T) -> Option<Uuid> {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6564_615f_636f_6d6d_616e_645f_6669_6e67);
    let mut canonical = String::new();
    sorted_json(&serde_json::to_value(fields).ok()?, &mut canonical);
    Some(Uuid::new_v5(&NAMESPACE, canonical.as_bytes()))
}

/// `value` as JSON text with every object's keys sorted, whatever order its map
/// keeps (serde_json's `preserve_order` keeps insertion order).
fn sorted_json(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(key.as_str()).to_string());
                out.push(':');
                sorted_json(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                sorted_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Error for a stored name the aggregate has no `#[apply]` for.
pub fn unknown_event<T>() -> Result<T, DecodeErrorKind> {
    Err(DecodeErrorKind::UnknownEvent)
}

/// A fresh, time-ordered event id.
pub fn new_event_id() -> uuid::Uuid {
    crate::envelope::event_id_at(crate::envelope::unix_millis(std::time::SystemTime::now()))
}

/// `a == b`, usable in constants (checks of `upcast_from`).
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Satisfied when a command's `#[aggregate_id]` type is the aggregate's id type.
#[diagnostic::on_unimplemented(
    message = "the `#[aggregate_id]` field has type `{Self}`, but the aggregate's id is `{Expected}`",
    label = "this command's id type does not match the aggregate's",
    note = "change the field's type, or set `#[aggregate(id = {Self})]`"
)]
pub trait IdMatches<Expected> {
    /// The id, as the aggregate's id type.
    fn as_expected(&self) -> &Expected;
}

impl<T> IdMatches<T> for T {
    fn as_expected(&self) -> &T {
        self
    }
}

/// Satisfied when `Old` can be upcast into `New`.
#[diagnostic::on_unimplemented(
    message = "`upcast_from = {Self}` needs `impl From<{Self}> for {New}`",
    label = "no `From<{Self}>` for `{New}`",
    note = "write the conversion that turns the old version into the new one"
)]
pub trait UpcastInto<New>: Event {
    /// Converts the old version into the new one.
    fn upcast(self) -> New;
}

impl<Old: Event, New: From<Old>> UpcastInto<New> for Old {
    fn upcast(self) -> New {
        New::from(self)
    }
}

/// A command's `#[aggregate_id]`, typed as its aggregate's id.
pub fn target_id<C, A>(command: &C) -> &A::Id
where
    C: Command,
    A: Aggregate,
    C::Id: IdMatches<A::Id>,
{
    command.aggregate_id().as_expected()
}

/// How an `upcast_from` type fails the rules, checked in a constant.
pub enum UpcastCheck {
    /// Same name, one version below.
    Ok,
    /// Another event name.
    WrongName,
    /// Not exactly one version below.
    WrongVersion,
}

/// Checks `Old` against the name and version of the event that upcasts from it.
pub const fn upcast_check<Old: Event>(name: &str, version: u32) -> UpcastCheck {
    if !str_eq(Old::NAME, name) {
        UpcastCheck::WrongName
    } else if Old::VERSION as u64 + 1 != version as u64 {
        UpcastCheck::WrongVersion
    } else {
        UpcastCheck::Ok
    }
}

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
