use crate::aggregate::{Aggregate, AggregateId, Handle};

/// A request to change one aggregate instance, routed by its `#[aggregate_id]` field.
///
/// Implemented by `#[command]`. A command is a plain message: it is cloned when a
/// version conflict makes [`App::execute`](crate::App::execute) decide again.
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
}

/// Links a command to the aggregate whose `#[handle]` method takes it.
///
/// Implemented by `#[aggregate]` for every command it handles, so
/// `app.execute(cmd)` finds the aggregate from the command's type alone.
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
