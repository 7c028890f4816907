use std::fmt::Debug;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::DecodeErrorKind;

/// A fact that happened, stored and shared under a stable name and schema version.
///
/// Implemented by `#[event]`, which also derives serde and registers the type, so
/// domain code never writes this impl by hand. `NAME` and `VERSION` are what the
/// store records next to the payload; renaming the Rust type does not change them.
///
/// ```
/// use eda::prelude::*;
///
/// #[event(name = "AccountOpened", version = 1)]
/// #[derive(Debug, Clone, PartialEq)]
/// pub struct AccountOpened { pub owner: String }
///
/// assert_eq!(<AccountOpened as Event>::NAME, "AccountOpened");
/// assert_eq!(<AccountOpened as Event>::VERSION, 1);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "add `#[event]` to the definition of `{Self}`"
)]
pub trait Event: Serialize + DeserializeOwned + Debug + Send + Sync + 'static {
    /// Stable name of the event, recorded with every stored instance.
    const NAME: &'static str;
    /// Schema version of this type; older versions are upcast on read.
    const VERSION: u32;

    /// Decodes a payload that was stored at schema `version`.
    ///
    /// The default accepts only [`Self::VERSION`]; `#[event(upcast_from = Old)]`
    /// overrides it to decode older versions through `Old` and `From<Old>`.
    fn decode(version: u32, payload: &str) -> Result<Self, DecodeErrorKind> {
        decode_exact(version, payload)
    }

    /// `Some(self == other)` when the type implements `PartialEq`, `None` when it
    /// does not: `#[event]` finds out. Used to check that an event reads back from
    /// its stored form as itself.
    #[doc(hidden)]
    fn same_value(&self, other: &Self) -> Option<bool> {
        let _ = other;
        None
    }
}

/// Decodes `payload` as `E` if it was stored at exactly `E::VERSION`.
pub(crate) fn decode_exact<E: Event>(version: u32, payload: &str) -> Result<E, DecodeErrorKind> {
    match version.cmp(&E::VERSION) {
        std::cmp::Ordering::Equal => {
            serde_json::from_str(payload).map_err(DecodeErrorKind::Payload)
        }
        std::cmp::Ordering::Greater => Err(DecodeErrorKind::NewerVersion { known: E::VERSION }),
        std::cmp::Ordering::Less => Err(DecodeErrorKind::NoUpcast { oldest: E::VERSION }),
    }
}

/// Decodes `payload` as `E`, or as `Old` upcast into `E` when it is older: the
/// decoder of an event declared with `upcast_from = Old`.
pub fn decode_upcast<E: Event, Old: UpcastInto<E>>(
    version: u32,
    payload: &str,
) -> Result<E, DecodeErrorKind> {
    if version < E::VERSION {
        Old::decode(version, payload).map(Old::upcast)
    } else {
        decode_exact(version, payload)
    }
}

/// Error for a stored name the aggregate has no `#[apply]` for.
pub fn unknown_event<T>() -> Result<T, DecodeErrorKind> {
    Err(DecodeErrorKind::UnknownEvent)
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
