//! The stored form of events and snapshots: JSON that reads back as exactly the
//! value that was written, or an [`EncodeError`] before anything is stored.
//!
//! `serde_json` writes NaN and the infinities as `null`, which does not read back
//! (or reads back as `None`); [`to_json`] refuses them instead, naming the field.
//! Floats round-trip exactly because eda turns on `serde_json`'s
//! `float_roundtrip`. [`encode_checked`] also decodes the payload and compares it
//! with the event, so a lossy `Serialize`/`Deserialize` pair is refused too.

use std::cell::Cell;
use std::fmt::{self, Write as _};

use serde::ser::{self, Serialize, Serializer};

use crate::aggregate::AggregateEvent;
use crate::error::EncodeError;
use crate::event::Event;

/// `value` as JSON text, refusing NaN and the infinities.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, EncodeError> {
    let found = Cell::new(None);
    let checked = Nested {
        value,
        path: Path::Root,
        found: &found,
    };
    serde_json::to_string(&checked).map_err(|error| match found.take() {
        Some((path, value)) => EncodeError::NonFinite { path, value },
        None => EncodeError::Serialize(error),
    })
}

/// Encodes `event` and checks that the payload reads back as the same event:
/// compared with `PartialEq` when the event type has it (`#[event]` finds out),
/// otherwise by the stored form of what it reads back as (maps compared as maps).
/// In that case `event` is replaced by what it reads back as, so the state a
/// command leaves in the cache is the state a replay rebuilds.
pub(crate) fn encode_checked<E: AggregateEvent>(event: &mut E) -> Result<String, EncodeError> {
    let payload = event.encode()?;
    let back = match E::decode(event.name(), event.version(), &payload) {
        Ok(back) => back,
        Err(source) => return Err(EncodeError::Unreadable { payload, source }),
    };
    match event.same_value(&back) {
        Some(true) => Ok(payload),
        Some(false) => Err(EncodeError::Changed {
            read_back: format!("{back:?}"),
            payload,
        }),
        None => {
            let again = back.encode()?;
            if same_json(&payload, &again) {
                *event = back;
                Ok(payload)
            } else {
                Err(EncodeError::Changed {
                    payload,
                    read_back: again,
                })
            }
        }
    }
}

/// Whether two JSON texts hold the same value (object keys in any order).
fn same_json(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// Where a value sits inside the one being serialized, for error messages.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
    /// A map's value.
    Entry(&'a Path<'a>),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("self"),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Entry(parent) => write!(f, "{parent}[..]"),
        }
    }
}

type Found = Cell<Option<(String, f64)>>;

/// A serializer that forwards to `inner` and fails on a non-finite float,
/// recording where it was in `found`.
struct Finite<'a, S> {
    inner: S,
    path: Path<'a>,
    found: &'a Found,
}

impl<S: Serializer> Finite<'_, S> {
    fn float(self, value: f64) -> Result<S::Ok, S::Error> {
        let mut path = String::new();
        let _ = write!(path, "{}", self.path);
        self.found.set(Some((path, value)));
        Err(ser::Error::custom("a float JSON cannot represent"))
    }
}

/// A value inside the one being serialized, serialized through [`Finite`].
struct Nested<'a, T: ?Sized> {
    value: &'a T,
    path: Path<'a>,
    found: &'a Found,
}

impl<T: Serialize + ?Sized> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Finite {
            inner: serializer,
            path: self.path,
            found: self.found,
        })
    }
}

/// A sequence, map or struct being serialized through [`Finite`].
struct Compound<'a, C> {
    inner: C,
    path: Path<'a>,
    found: &'a Found,
    index: usize,
}

impl<C> Compound<'_, C> {
    fn next_index(&mut self) -> usize {
        self.index += 1;
        self.index - 1
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method(self, $($arg: $ty),*) -> Result<S::Ok, S::Error> {
            self.inner.$method($($arg),*)
        }
    )*};
}

impl<'a, S: Serializer> Serializer for Finite<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f32(v)
        } else {
            self.float(f64::from(v))
        }
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f64(v)
        } else {
            self.float(v)
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        let nested = Nested {
            value,
            path: self.path,
            found: self.found,
        };
        self.inner.serialize_some(&nested)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let nested = Nested {
            value,
            path: self.path,
            found: self.found,
        };
        self.inner.serialize_newtype_struct(name, &nested)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let parent = self.path;
        let nested = Nested {
            value,
            path: Path::Field(&parent, variant),
            found: self.found,
        };
        self.inner
            .serialize_newtype_variant(name, index, variant, &nested)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Ok(compound(
            self.inner.serialize_seq(len)?,
            self.path,
            self.found,
        ))
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        Ok(compound(
            self.inner.serialize_tuple(len)?,
            self.path,
            self.found,
        ))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        let inner = self.inner.serialize_tuple_struct(name, len)?;
        Ok(compound(inner, self.path, self.found))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        let inner = self
            .inner
            .serialize_tuple_variant(name, index, variant, len)?;
        Ok(compound(inner, self.path, self.found))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Ok(compound(
            self.inner.serialize_map(len)?,
            self.path,
            self.found,
        ))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        let inner = self.inner.serialize_struct(name, len)?;
        Ok(compound(inner, self.path, self.found))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let inner = self
            .inner
            .serialize_struct_variant(name, index, variant, len)?;
        Ok(compound(inner, self.path, self.found))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

fn compound<'a, C>(inner: C, path: Path<'a>, found: &'a Found) -> Compound<'a, C> {
    Compound {
        inner,
        path,
        found,
        index: 0,
    }
}

/// The element-wise compound traits: each element sits at the next index.
macro_rules! elements {
    ($($trait:ident :: $method:ident;)*) => {$(
        impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                let (index, path, found) = (self.next_index(), self.path, self.found);
                self.inner.$method(&Nested { value, path: Path::Index(&path, index), found })
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.inner.end()
            }
        }
    )*};
}

elements! {
    SerializeSeq::serialize_element;
    SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field;
    SerializeTupleVariant::serialize_field;
}

/// The named-field compound traits.
macro_rules! fields {
    ($($trait:ident;)*) => {$(
        impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), C::Error> {
                let (path, found) = (self.path, self.found);
                self.inner.serialize_field(key, &Nested { value, path: Path::Field(&path, key), found })
            }

            fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                self.inner.skip_field(key)
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.inner.end()
            }
        }
    )*};
}

fields! {
    SerializeStruct;
    SerializeStructVariant;
}

impl<C: ser::SerializeMap> ser::SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        let (path, found) = (self.path, self.found);
        let key = Nested {
            value: key,
            path: Path::Entry(&path),
            found,
        };
        self.inner.serialize_key(&key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let (path, found) = (self.path, self.found);
        let value = Nested {
            value,
            path: Path::Entry(&path),
            found,
        };
        self.inner.serialize_value(&value)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

/// `PartialEq` when the type has it, found by autoref specialization in the code
/// `#[event]` generates (where the event type is concrete): the by-value receiver
/// `&Probe<T>` matches [`ViaPartialEq`] if `T: PartialEq`; otherwise method lookup
/// goes on to `&&Probe<T>` and finds [`WithoutPartialEq`].
#[doc(hidden)]
pub struct Probe<'a, T>(pub &'a T);

#[doc(hidden)]
pub trait ViaPartialEq<T> {
    fn __eda_same_value(&self, other: &T) -> Option<bool>;
}

impl<T: PartialEq> ViaPartialEq<T> for Probe<'_, T> {
    fn __eda_same_value(&self, other: &T) -> Option<bool> {
        Some(self.0 == other)
    }
}

#[doc(hidden)]
pub trait WithoutPartialEq<T> {
    fn __eda_same_value(&self, other: &T) -> Option<bool>;
}

impl<T> WithoutPartialEq<T> for &Probe<'_, T> {
    fn __eda_same_value(&self, _: &T) -> Option<bool> {
        None
    }
}

/// Serializes one event as its stored payload, refusing non-finite floats.
pub fn encode<E: Event>(event: &E) -> Result<String, EncodeError> {
    crate::codec::to_json(event)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(serde::Serialize)]
    struct Reading {
        label: String,
        value: f64,
        samples: Vec<f32>,
        by_name: BTreeMap<String, Option<f64>>,
        nested: Option<Inner>,
    }

    #[derive(serde::Serialize)]
    struct Inner(u8, f64);

    fn reading() -> Reading {
        Reading {
            label: "a".into(),
            value: 1.5,
            samples: vec![0.1, 2.0],
            by_name: BTreeMap::from([("x".into(), Some(-0.0)), ("y".into(), None)]),
            nested: Some(Inner(1, f64::MAX)),
        }
    }

    #[test]
    fn finite_values_are_written_as_serde_json_writes_them() {
        let value = reading();
        assert_eq!(
            to_json(&value).unwrap(),
            serde_json::to_string(&value).unwrap()
        );
        assert_eq!(to_json(&u128::MAX).unwrap(), u128::MAX.to_string());
    }

    #[test]
    fn non_finite_floats_are_refused_with_their_path() {
        type Spoil = fn(&mut Reading);
        let cases: [(Spoil, &str, f64); 4] = [
            (|r| r.value = f64::NAN, "value", f64::NAN),
            (
                |r| r.samples[1] = f32::INFINITY,
                "samples[1]",
                f64::INFINITY,
            ),
            (
                |r| {
                    r.by_name.insert("z".into(), Some(f64::NEG_INFINITY));
                },
                "by_name[..]",
                f64::NEG_INFINITY,
            ),
            (
                |r| r.nested = Some(Inner(1, f64::NAN)),
                "nested[1]",
                f64::NAN,
            ),
        ];
        for (spoil, expected_path, expected_value) in cases {
            let mut value = reading();
            spoil(&mut value);
            match to_json(&value) {
                Err(EncodeError::NonFinite { path, value }) => {
                    assert_eq!(path, expected_path);
                    assert_eq!(value.to_bits(), expected_value.to_bits());
                }
                other => panic!("{expected_path}: expected NonFinite, got {other:?}"),
            }
        }
        assert!(matches!(
            to_json(&f64::NAN),
            Err(EncodeError::NonFinite { ref path, .. }) if path == "self"
        ));
    }

    #[test]
    fn other_serialization_errors_stay_serialize_errors() {
        let map = std::collections::HashMap::from([((1, 2), 3)]);
        assert!(matches!(to_json(&map), Err(EncodeError::Serialize(_))));
    }

    #[test]
    fn json_is_compared_as_values() {
        assert!(same_json(r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#));
        assert!(!same_json(r#"{"a":1}"#, r#"{"a":2}"#));
        assert!(!same_json(r#"{"a":1}"#, "not json"));
    }
}
