use std::any::Any;
use std::collections::HashMap;
use std::sync::OnceLock;

use crate::error::{DecodeErrorKind, RegistryError};
use crate::event::Event;

/// Decodes a payload stored at a schema version into a boxed event.
pub type DecodeFn = fn(u32, &str) -> Result<Box<dyn Any + Send>, DecodeErrorKind>;

/// One event type, registered by `#[event]` at link time.
#[derive(Debug)]
#[non_exhaustive]
pub struct EventRegistration {
    /// [`Event::NAME`](crate::Event::NAME).
    pub name: &'static str,
    /// [`Event::VERSION`](crate::Event::VERSION).
    pub version: u32,
    /// Path of the Rust type, for messages.
    pub type_path: &'static str,
    /// Decodes a payload stored at the given version into this type (boxed), through
    /// its upcast chain.
    pub decode: DecodeFn,
    /// `#[event(public)]`: the event leaves its service (a relay publishes it).
    pub public: bool,
    /// `#[event(public, subject = "...")]`: where it is published.
    pub subject: Option<&'static str>,
}

impl EventRegistration {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        version: u32,
        type_path: &'static str,
        decode: DecodeFn,
    ) -> Self {
        EventRegistration {
            name,
            version,
            type_path,
            decode,
            public: false,
            subject: None,
        }
    }

    /// The same registration, of a public event published at `subject` (or
    /// at the relay's default subject).
    #[doc(hidden)]
    #[must_use]
    pub const fn public(mut self, subject: Option<&'static str>) -> Self {
        self.public = true;
        self.subject = subject;
        self
    }
}

inventory::collect!(EventRegistration);

/// Every event type linked into the program, indexed by name and schema version.
#[derive(Debug)]
pub struct Registry {
    by_key: HashMap<(&'static str, u32), &'static EventRegistration>,
    latest: HashMap<&'static str, &'static EventRegistration>,
    duplicates: Vec<RegistryError>,
    /// The names whose newest type is `#[event(public)]`, sorted.
    public: Vec<&'static str>,
}

/// The registry of every `#[event]` type in the program, built on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry::build(inventory::iter::<EventRegistration>))
}

impl Registry {
    fn build(registrations: impl IntoIterator<Item = &'static EventRegistration>) -> Self {
        let mut registry = Registry {
            by_key: HashMap::new(),
            latest: HashMap::new(),
            duplicates: Vec::new(),
            public: Vec::new(),
        };
        let mut all: Vec<&'static EventRegistration> = registrations.into_iter().collect();
        // Link order is unspecified; sorting makes the reported duplicate pair stable.
        all.sort_by_key(|r| (r.name, r.version, r.type_path));
        for reg in all {
            match registry.by_key.get(&(reg.name, reg.version)) {
                Some(first) => registry.duplicates.push(RegistryError::DuplicateEvent {
                    name: reg.name,
                    version: reg.version,
                    first: first.type_path,
                    second: reg.type_path,
                }),
                None => {
                    registry.by_key.insert((reg.name, reg.version), reg);
                    let latest = registry.latest.entry(reg.name).or_insert(reg);
                    if latest.version < reg.version {
                        *latest = reg;
                    }
                }
            }
        }
        let latest = registry.latest.values();
        registry.public = latest.filter(|r| r.public).map(|r| r.name).collect();
        registry.public.sort_unstable();
        registry
    }

    /// The names of the public events (`#[event(public)]` on their newest
    /// version): what a relay publishes.
    pub fn public_events(&self) -> &[&'static str] {
        &self.public
    }

    /// Fails if two types claim the same event name and version.
    pub fn check(&self) -> Result<(), RegistryError> {
        self.duplicates.first().map_or(Ok(()), |e| Err(e.clone()))
    }

    /// Every duplicate declaration found.
    pub fn duplicates(&self) -> &[RegistryError] {
        &self.duplicates
    }

    /// The type registered for `name` at exactly `version`.
    pub fn get(&self, name: &str, version: u32) -> Option<&'static EventRegistration> {
        self.by_key.get(&(name, version)).copied()
    }

    /// The newest version registered for `name`.
    pub fn latest(&self, name: &str) -> Option<&'static EventRegistration> {
        self.latest.get(name).copied()
    }

    /// Every registered event type, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &'static EventRegistration> + '_ {
        self.by_key.values().copied()
    }

    /// Decodes a stored payload into the newest type registered under `name`,
    /// upcasting older versions; downcast the result to that type.
    pub fn decode(
        &self,
        name: &str,
        version: u32,
        payload: &str,
    ) -> Result<Box<dyn Any + Send>, DecodeErrorKind> {
        let latest = self.latest(name).ok_or(DecodeErrorKind::UnknownEvent)?;
        (latest.decode)(version, payload)
    }
}

/// The registry's type-erased decoder for `E`.
pub fn decode_boxed<E: Event>(
    version: u32,
    payload: &str,
) -> Result<Box<dyn Any + Send>, DecodeErrorKind> {
    E::decode(version, payload).map(|e| Box::new(e) as Box<dyn Any + Send>)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: u32, _: &str) -> Result<Box<dyn Any + Send>, DecodeErrorKind> {
        Err(DecodeErrorKind::UnknownEvent)
    }

    static A1: EventRegistration = EventRegistration::new("A", 1, "x::A1", never);
    static A2: EventRegistration = EventRegistration::new("A", 2, "x::A2", never);
    static A2_AGAIN: EventRegistration = EventRegistration::new("A", 2, "y::Other", never);

    #[test]
    fn newest_version_wins_lookup() {
        let r = Registry::build([&A2, &A1]);
        assert!(r.check().is_ok());
        assert_eq!(r.latest("A").map(|r| r.type_path), Some("x::A2"));
        assert_eq!(r.get("A", 1).map(|r| r.type_path), Some("x::A1"));
        assert!(r.get("B", 1).is_none());
    }

    #[test]
    fn duplicates_name_both_types() {
        let r = Registry::build([&A2_AGAIN, &A1, &A2]);
        let err = r.check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "event `A` version 2 is declared twice: by `x::A2` and by `y::Other`"
        );
    }
}
