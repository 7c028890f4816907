use std::fmt::Debug;

use serde::{de::DeserializeOwned, Serialize};

use crate::__private::UpcastInto;
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
