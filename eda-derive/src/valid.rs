//! Rules that span more than one method of an `#[aggregate]` block, one function each.

use syn::{GenericArgument, Ident, PathArguments, Type};

use crate::ast::{AggregateImpl, Applier};
use crate::ctxt::Ctxt;
use crate::types::{last_ident, type_key, type_text};

/// How much of a handler is expanded once the checks have run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expand {
    /// Valid: the real impls.
    Full,
    /// Reported: impls whose body is never reached, so uses of the command do not
    /// add follow-on errors.
    Stub,
    /// Reported, and an impl would conflict with another one: nothing.
    Nothing,
}

/// Routing is by command type, so one command cannot go to two methods.
/// The later handlers expand to nothing.
pub(crate) fn one_handler_per_command(cx: &mut Ctxt, agg: &AggregateImpl, expand: &mut [Expand]) {
    for (i, h) in agg.handlers.iter().enumerate() {
        if let Some(first) = agg.handlers[..i]
            .iter()
            .find(|f| type_key(&f.command) == type_key(&h.command))
        {
            expand[i] = Expand::Nothing;
            cx.error_spanned_by(
                &h.command,
                format_args!(
                    "command `{}` is already handled by `{}`",
                    type_key(&h.command),
                    first.method
                ),
            );
        }
    }
}

/// Replay calls exactly one method per event.
pub(crate) fn one_applier_per_event(cx: &mut Ctxt, agg: &AggregateImpl) {
    for (i, a) in agg.appliers.iter().enumerate() {
        if let Some(first) = agg.appliers[..i]
            .iter()
            .find(|f| type_key(&f.event) == type_key(&a.event))
        {
            cx.error_spanned_by(
                &a.event,
                format_args!(
                    "event `{}` is already applied by `{}`",
                    type_key(&a.event),
                    first.method
                ),
            );
        } else if let Some(first) = agg.appliers[..i].iter().find(|f| {
            last_ident(&f.event).is_some() && last_ident(&f.event) == last_ident(&a.event)
        }) {
            cx.error_spanned_by(
                &a.event,
                format_args!(
                    "`{}` and `{}` would both be the variant `{}` of the event enum; rename one of the types",
                    type_key(&first.event),
                    type_key(&a.event),
                    last_ident(&a.event).map(ToString::to_string).unwrap_or_default()
                ),
            );
        }
        if last_ident(&a.event).is_none() {
            cx.error_spanned_by(
                &a.event,
                "an #[apply] method takes a reference to a named event type",
            );
        }
    }
}

/// A handler may only return events that replay can apply, or its state would
/// differ between the command and the next load. Offending handlers expand to stubs.
pub(crate) fn returned_events_are_applied(
    cx: &mut Ctxt,
    agg: &AggregateImpl,
    self_name: &str,
    enum_name: &Ident,
    expand: &mut [Expand],
) {
    for (i, h) in agg.handlers.iter().enumerate() {
        let mut leaves = Vec::new();
        if let Err((ty, why)) = event_leaves(&h.output, &mut leaves) {
            cx.error_spanned_by(ty, why);
            expand[i] = stub(expand[i]);
            continue;
        }
        for leaf in leaves {
            let ident = last_ident(leaf);
            if ident == Some(enum_name) {
                continue;
            }
            if !agg.appliers.iter().any(|a| applies(a, leaf)) {
                expand[i] = stub(expand[i]);
                cx.error_spanned_by(
                    leaf,
                    format_args!(
                        "event `{}` is returned by `{}` but has no #[apply] method on `{self_name}`",
                        type_key(leaf),
                        h.method
                    ),
                );
            }
        }
    }
}

/// A handler's services come from `#[aggregate(services = ..)]`: the app looks them up
/// by the aggregate's type, never by a handler's argument. Offending handlers
/// expand to stubs.
pub(crate) fn services_are_declared(
    cx: &mut Ctxt,
    agg: &AggregateImpl,
    declared: Option<&Type>,
    self_name: &str,
    expand: &mut [Expand],
) {
    if declared.is_some() {
        return;
    }
    for (i, h) in agg.handlers.iter().enumerate() {
        if let Some(services) = &h.services {
            expand[i] = stub(expand[i]);
            cx.error_spanned_by(
                services,
                format_args!(
                    "`{}` takes services, but `{self_name}` declares none: add `services = {}` to its #[aggregate(..)]",
                    h.method,
                    type_text(services)
                ),
            );
        }
    }
}

/// `Full` becomes `Stub`; `Nothing` stays.
pub(crate) fn stub(expand: Expand) -> Expand {
    match expand {
        Expand::Full => Expand::Stub,
        other => other,
    }
}

fn applies(applier: &Applier, event: &Type) -> bool {
    type_key(&applier.event) == type_key(event)
        || (last_ident(&applier.event).is_some() && last_ident(&applier.event) == last_ident(event))
}

/// The event types inside a handler's `Ok` type: one event, `Option<T>`, `Vec<T>`,
/// tuples of up to 8 of these, or `()`.
fn event_leaves<'a>(ty: &'a Type, out: &mut Vec<&'a Type>) -> Result<(), (&'a Type, &'static str)> {
    const SHAPE: &str = "a #[handle] method returns events as one event, `Option<E>`, `Vec<E>`, a tuple of these (at most 8) or `()`";
    match ty {
        Type::Tuple(t) if t.elems.len() > 8 => Err((ty, SHAPE)),
        Type::Tuple(t) => t.elems.iter().try_for_each(|e| event_leaves(e, out)),
        Type::Paren(p) => event_leaves(&p.elem, out),
        Type::Group(g) => event_leaves(&g.elem, out),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return Err((ty, SHAPE));
            };
            if last.ident == "Option" || last.ident == "Vec" {
                let PathArguments::AngleBracketed(args) = &last.arguments else {
                    return Err((ty, SHAPE));
                };
                let mut inner = args.args.iter().filter_map(|a| match a {
                    GenericArgument::Type(t) => Some(t),
                    _ => None,
                });
                match (inner.next(), inner.next()) {
                    (Some(t), None) => event_leaves(t, out),
                    _ => Err((ty, SHAPE)),
                }
            } else {
                out.push(ty);
                Ok(())
            }
        }
        _ => Err((ty, SHAPE)),
    }
}
