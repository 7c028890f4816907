use uuid::Uuid;

use crate::aggregate::{Aggregate, AggregateId, Handle};

/// A request to change one aggregate instance, routed by its `#[aggregate_id]` field.
///
/// Implemented by `#[command]`. A command is a plain message: it is cloned when a
/// version conflict makes [`App::execute`](crate::App::execute) decide again.
///
/// ```
/// use eda::prelude::*;
///
/// #[command]
/// #[derive(Debug, Clone)]
/// pub struct RelocateCustomer { #[aggregate_id] pub customer: u64, pub street: String }
///
/// let cmd = RelocateCustomer { customer: 7, street: "Main St 1".into() };
/// assert_eq!(*cmd.aggregate_id(), 7);
/// assert_eq!(<RelocateCustomer as Command>::NAME, "RelocateCustomer");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not a command",
    note = "add `#[command]` to the definition of `{Self}` and mark its id field `#[aggregate_id]`"
)]
pub trait Command: Clone + Send + 'static {
    /// Type of the `#[aggregate_id]` field.
    type Id: AggregateId;
    /// Name of the command, used in traces and test failures.
    const NAME: &'static str;
    /// The id of the aggregate instance this command is addressed to.
    fn aggregate_id(&self) -> &Self::Id;

    /// A fingerprint of the command's fields, kept with its idempotency key so that
    /// the key coming back with other fields is refused
    /// ([`CommandError::IdempotencyKeyReused`](crate::CommandError::IdempotencyKeyReused)).
    /// `#[command]` derives it from the fields' JSON form (map keys sorted, so a
    /// `HashMap` gives the same fingerprint whatever its order); `None` skips the
    /// check.
    fn fingerprint(&self) -> Option<uuid::Uuid> {
        None
    }
}

/// Links a command to the aggregate whose `#[handle]` method takes it.
///
/// Implemented by `#[aggregate]` for every command it handles, so
/// `app.execute(cmd)` finds the aggregate from the command's type alone.
///
/// ```
/// use eda::prelude::*;
/// use eda::HandledCommand;
///
/// #[event] #[derive(Debug)] pub struct Opened;
/// #[command] #[derive(Debug, Clone)] pub struct Open { #[aggregate_id] pub id: String }
/// #[derive(Debug, Default)] pub struct Account;
///
/// #[aggregate(error = std::convert::Infallible)]
/// impl Account {
///     #[handle] fn open(&self, _: Open) -> Result<Opened, std::convert::Infallible> { Ok(Opened) }
///     #[apply] fn opened(&mut self, _: &Opened) {}
/// }
///
/// fn aggregate_of<C: HandledCommand>() -> &'static str { <C::Aggregate as Aggregate>::TYPE }
/// assert_eq!(aggregate_of::<Open>(), "Account");
/// ```
#[diagnostic::on_unimplemented(
    message = "command `{Self}` is not handled by any aggregate",
    label = "no `#[handle]` method takes `{Self}`",
    note = "add `#[handle] fn ...(&self, cmd: {Self}) -> Result<..., ...>` to an `#[aggregate]` impl block"
)]
pub trait HandledCommand: Command + Sized {
    /// The aggregate that decides this command.
    type Aggregate: Aggregate + Handle<Self>;

    /// The `#[aggregate_id]` field, typed as the aggregate's id (the macro checks
    /// at compile time that the two types are the same).
    fn target_id(&self) -> &<Self::Aggregate as Aggregate>::Id;
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

/// A command's `#[aggregate_id]`, typed as its aggregate's id.
pub fn target_id<C, A>(command: &C) -> &A::Id
where
    C: Command,
    A: Aggregate,
    C::Id: IdMatches<A::Id>,
{
    command.aggregate_id().as_expected()
}

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
