//! Policies: reactions that turn events into commands ("when a customer
//! relocates, schedule an address check"), executed exactly once in effect.
//!
//! A policy's runner reads the log as a projection's does and executes each
//! command its `#[on]` methods return through [`App`], with an idempotency key
//! derived from the policy's name, the event's id and the command's index among
//! those the event caused. A runner that stops between executing a command and
//! moving its checkpoint executes it again after a restart with the same key, and
//! the store answers with the first execution's events instead of appending twice.

use std::fmt;

use uuid::Uuid;

use crate::app::App;
use crate::command::HandledCommand;
use crate::envelope::RecordedEvent;
use crate::error::{CommandError, DecodeErrorKind};
use crate::store::BoxFuture;

pub(crate) mod lease;
mod runner;

pub use runner::{PolicyBuilder, PolicyHandle};

/// Events in, commands out: implemented by `#[policy]` on an impl block whose
/// `#[on]` methods take `&self`, the event by reference (and optionally
/// `&RecordedEvent`) and return the commands to execute ([`IntoReactions`]).
pub trait Policy: Send + Sync + 'static {
    /// The policy's name (`#[policy(name = "...")]`, the type's name by default):
    /// part of every idempotency key it derives, and the name of its checkpoint.
    const NAME: &'static str;
    /// The stored names of the events its `#[on]` methods take.
    const EVENTS: &'static [&'static str];

    /// Decodes `event` (one of [`EVENTS`](Self::EVENTS)), runs its `#[on]` method
    /// and adds the commands it returned to `reactions`. An event of another name
    /// adds nothing.
    fn react(
        &self,
        event: &RecordedEvent,
        reactions: &mut Reactions,
    ) -> Result<(), DecodeErrorKind>;
}

/// What a policy's `#[on]` method may return: `Option<C>`, `Vec<C>`, a command
/// `C` itself, or a tuple of these, where each `C` is a command an `#[aggregate]`
/// handles. `None` and an empty `Vec` mean "no reaction".
#[diagnostic::on_unimplemented(
    message = "a #[policy] cannot execute `{Self}`",
    label = "not commands",
    note = "an #[on] method of a #[policy] returns commands: `Option<C>`, `Vec<C>`, `C`, or a tuple of these, where an #[aggregate] has a #[handle] method for `C`"
)]
pub trait IntoReactions {
    /// Adds the commands, in order, to `reactions`.
    fn into_reactions(self, reactions: &mut Reactions);
}

impl<C: HandledCommand + Sync> IntoReactions for C {
    fn into_reactions(self, reactions: &mut Reactions) {
        reactions.push(self);
    }
}

impl<C: HandledCommand + Sync> IntoReactions for Option<C> {
    fn into_reactions(self, reactions: &mut Reactions) {
        if let Some(command) = self {
            reactions.push(command);
        }
    }
}

impl<C: HandledCommand + Sync> IntoReactions for Vec<C> {
    fn into_reactions(self, reactions: &mut Reactions) {
        for command in self {
            reactions.push(command);
        }
    }
}

macro_rules! tuple_reactions {
    ($($t:ident)+) => {
        impl<$($t: IntoReactions),+> IntoReactions for ($($t,)+) {
            #[allow(non_snake_case)]
            fn into_reactions(self, reactions: &mut Reactions) {
                let ($($t,)+) = self;
                $($t.into_reactions(reactions);)+
            }
        }
    };
}
tuple_reactions!(A B);
tuple_reactions!(A B C);
tuple_reactions!(A B C D);

/// The commands an event caused, in the order the policy returned them.
#[derive(Default)]
pub struct Reactions {
    commands: Vec<Box<dyn Reaction>>,
}

impl fmt::Debug for Reactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.commands.iter().map(|c| c.name()))
            .finish()
    }
}

impl Reactions {
    /// Adds `command`.
    pub fn push<C: HandledCommand + Sync>(&mut self, command: C) {
        self.commands.push(Box::new(command));
    }

    /// How many commands there are.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub(crate) fn into_commands(self) -> Vec<Box<dyn Reaction>> {
        self.commands
    }
}

/// How a policy's command ended.
#[derive(Debug)]
pub(crate) enum Reacted {
    /// Committed (or found committed by an earlier execution with its key), or
    /// decided with no events.
    Done,
    /// The aggregate refused it: the rejection, displayed with `{:?}`.
    Rejected(String),
}

/// A command of any type, executed with the key and ids the runner derives.
pub(crate) trait Reaction: Send {
    fn name(&self) -> &'static str;

    fn execute<'a>(
        self: Box<Self>,
        app: &'a App,
        key: Option<String>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Reacted, CommandFailed>>;
}

/// A command that could not be executed (the store failed, conflicts outlasted
/// the retries, ...): tried again later, as a projection's failed event is.
#[derive(Debug)]
pub(crate) struct CommandFailed(pub(crate) Box<dyn std::error::Error + Send + Sync>);

impl<C: HandledCommand + Sync> Reaction for C {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn execute<'a>(
        self: Box<Self>,
        app: &'a App,
        key: Option<String>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Reacted, CommandFailed>> {
        let correlation = event.metadata.correlation_id.unwrap_or(event.event_id);
        Box::pin(async move {
            let mut execute = app
                .execute(*self)
                .causation_id(event.event_id)
                .correlation_id(correlation);
            if let Some(key) = key {
                execute = execute.idempotency_key(key);
            }
            let outcome = execute.await;
            match outcome {
                Ok(_) => Ok(Reacted::Done),
                Err(CommandError::Rejected(error)) => Ok(Reacted::Rejected(format!("{error:?}"))),
                Err(CommandError::Store(error)) => Err(CommandFailed(error.into())),
                Err(other) => Err(CommandFailed(format!("{other:?}").into())),
            }
        })
    }
}

/// The idempotency key of the `index`th command `event` caused in `policy`.
pub(crate) fn reaction_key(policy: &str, event_id: Uuid, index: usize) -> String {
    format!("eda.policy/{policy}/{event_id}/{index}")
}
