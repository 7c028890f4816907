//! Every check of the macros' inputs, one function per rule with the reason for it.
//! Each macro's check runs its rules in order and says what expansion may rely on.

use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    DeriveInput, FnArg, GenericArgument, Ident, ItemImpl, LitStr, PathArguments, ReturnType,
    Signature, Token, Type, TypeReference,
};

use crate::ast::{Aggregate, AggregateId, Command, Event, Method, Policy, Projection, ReadSide};
use crate::attr::{AggregateArgs, EventArgs};
use crate::ctxt::Ctxt;
use crate::types::{last_ident, result_ok, type_key, type_text};

/// Checks an `#[event]`. False if it cannot be expanded: then the item is emitted
/// alone.
pub(crate) fn event(cx: &mut Ctxt, event: &Event) -> bool {
    event_is_a_struct(cx, &event.item);
    event_is_not_generic(cx, &event.item);
    // Impls of an item these rules or the arguments reject would fail as well.
    if cx.has_errors() {
        return false;
    }
    event_name_is_not_empty(cx, &event.args);
    subject_of_a_public_event(cx, &event.args);
    a_copy_is_not_published(cx, &event.args);
    true
}

/// A copy reads another service's event: that service publishes it, not the
/// reader.
fn a_copy_is_not_published(cx: &mut Ctxt, args: &EventArgs) {
    if let (Some(copy), Some(_)) = (&args.copy, &args.public) {
        cx.error_spanned_by(
            copy,
            "a `copy` of another service's event is not `public`: the service that owns the event publishes it",
        );
    }
}

/// Checks a `#[command]`: the field it is routed by, or `None` if it cannot
/// implement `Command` (then it gets a stub).
pub(crate) fn command<'a>(cx: &mut Ctxt, command: &'a Command) -> Option<&'a AggregateId> {
    aggregate_id_takes_no_arguments(cx, &command.ids);
    command_is_a_struct(cx, &command.item);
    one_aggregate_id(cx, command);
    command_owns_its_data(cx, &command.item);
    if command.item.generics.lifetimes().next().is_some() {
        return None;
    }
    command.ids.first()
}

/// What the checks of an `#[aggregate]` let through to expansion.
pub(crate) struct Checked {
    /// The self type's name, unraw.
    pub(crate) name: String,
    /// `<name>Event`, the generated enum of the aggregate's events.
    pub(crate) event_enum: Ident,
    /// The handlers whose signature fits, and how much of each to expand.
    pub(crate) handlers: Vec<(Handler, Expand)>,
    /// The event enum's variants in declaration order, one per name; appliers the
    /// checks rejected are left out so that the rest still expands (fewer follow-on
    /// errors).
    pub(crate) variants: Vec<(Ident, Applier)>,
}

/// A `#[handle]` method whose signature fits.
pub(crate) struct Handler {
    pub(crate) method: Ident,
    pub(crate) command: Type,
    /// The `X` of `Result<X, E>` (or of a one-argument `Result<X>` alias).
    pub(crate) output: Type,
    /// The `S` of a third argument `services: &S`.
    pub(crate) services: Option<Type>,
    /// `async fn`.
    pub(crate) asyncness: Option<Token![async]>,
}

/// An `#[apply]` method whose signature fits.
pub(crate) struct Applier {
    pub(crate) method: Ident,
    pub(crate) event: Type,
}

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

/// Checks an `#[aggregate]` block, or returns `None` if it has no name to expand
/// under (then it is emitted as written).
pub(crate) fn aggregate(cx: &mut Ctxt, agg: &Aggregate) -> Option<Checked> {
    inherent_impl(cx, &agg.item);
    aggregate_is_not_generic(cx, &agg.item);
    let Some(ident) = &agg.ident else {
        cx.error_spanned_by(
            &agg.item.self_ty,
            "#[aggregate] needs a named struct type: `impl Account { ... }`",
        );
        return None;
    };
    let name = ident.unraw().to_string();
    let event_enum = format_ident!("{}Event", name);

    // Methods whose signature does not fit are reported and left out.
    let mut handlers = Vec::new();
    let mut appliers = Vec::new();
    for method in &agg.methods {
        match role(cx, method) {
            Some(Role::Handle) => handlers.extend(handler(cx, &method.sig)),
            Some(Role::Apply) => appliers.extend(applier(cx, &method.sig)),
            None => {}
        }
    }

    // Handlers that fail a check are not expanded, so their mistake is reported
    // once instead of again by the type checker.
    let mut expand = vec![Expand::Full; handlers.len()];
    one_handler_per_command(cx, &handlers, &mut expand);
    one_applier_per_event(cx, &appliers);
    returned_events_are_applied(cx, &handlers, &appliers, &name, &event_enum, &mut expand);
    services_are_declared(
        cx,
        &handlers,
        agg.args.services.as_ref(),
        &name,
        &mut expand,
    );
    error_is_declared(cx, &handlers, &agg.args, &mut expand);
    snapshot_version_goes_with_snapshot_every(cx, &agg.args);
    Some(Checked {
        name,
        event_enum,
        handlers: handlers.into_iter().zip(expand).collect(),
        variants: variants(appliers),
    })
}

/// Each event is stored as its own struct; the aggregate generates the enum of them.
fn event_is_a_struct(cx: &mut Ctxt, item: &DeriveInput) {
    match &item.data {
        syn::Data::Struct(_) => {}
        syn::Data::Enum(e) => cx.error_spanned_by(
            e.enum_token,
            "#[event] goes on a struct; declare each event as its own struct",
        ),
        syn::Data::Union(u) => cx.error_spanned_by(
            u.union_token,
            "#[event] goes on a struct, not a union: events are serialized",
        ),
    }
}

/// An event is stored and decoded under one name, so it is one type.
fn event_is_not_generic(cx: &mut Ctxt, item: &DeriveInput) {
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "an #[event] cannot be generic: it is stored and decoded under one name",
        );
    }
}

/// Replay finds a stored event by its name.
fn event_name_is_not_empty(cx: &mut Ctxt, args: &EventArgs) {
    if let Some(lit) = args.name.as_ref().filter(|lit| lit.value().is_empty()) {
        cx.error_spanned_by(lit, "an event `name` cannot be empty");
    }
}

/// A subject says where a public event is published: only public events have
/// one, and it is a valid NATS subject (dot-separated tokens, no wildcards).
fn subject_of_a_public_event(cx: &mut Ctxt, args: &EventArgs) {
    let Some(subject) = &args.subject else {
        return;
    };
    if args.public.is_none() {
        cx.error_spanned_by(
            subject,
            "`subject` names where a public event is published: mark the event `public` too, `#[event(public, subject = \"...\")]`",
        );
    }
    let value = subject.value();
    let token_ok = |token: &str| {
        !token.is_empty()
            && !token
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
    };
    if !value.split('.').all(token_ok) {
        cx.error_spanned_by(
            subject,
            "a `subject` is dot-separated tokens, each non-empty, without spaces, `*` or `>`: like `\"customers.registered\"`",
        );
    }
}

/// The marker only marks the field; there is nothing to configure.
fn aggregate_id_takes_no_arguments(cx: &mut Ctxt, ids: &[AggregateId]) {
    for id in ids {
        if !matches!(id.marker.meta, syn::Meta::Path(_)) {
            cx.error_spanned_by(&id.marker, "#[aggregate_id] takes no arguments");
        }
    }
}

/// A command is routed by one of its fields.
fn command_is_a_struct(cx: &mut Ctxt, item: &DeriveInput) {
    match &item.data {
        syn::Data::Struct(_) => {}
        syn::Data::Enum(e) => cx.error_spanned_by(e.enum_token, "#[command] goes on a struct"),
        syn::Data::Union(u) => {
            cx.error_spanned_by(u.union_token, "#[command] goes on a struct, not a union")
        }
    }
}

/// The `#[aggregate_id]` field names the one aggregate instance the command goes to.
fn one_aggregate_id(cx: &mut Ctxt, command: &Command) {
    let item = &command.item;
    if matches!(item.data, syn::Data::Struct(_)) && command.ids.is_empty() {
        cx.error_spanned_by(
            &item.ident,
            format_args!("command `{}` needs one field marked #[aggregate_id]: it names the aggregate instance the command goes to", item.ident),
        );
    }
    for id in command.ids.iter().skip(1) {
        cx.push(syn::Error::new(
            id.span,
            "only one field can be #[aggregate_id]",
        ));
    }
}

/// A command outlives the caller's borrows: it is moved into `App::execute` and
/// may be retried.
fn command_owns_its_data(cx: &mut Ctxt, item: &DeriveInput) {
    if let Some(lifetime) = item.generics.lifetimes().next() {
        cx.error_spanned_by(
            lifetime,
            "a command cannot borrow: it is moved into `App::execute` and may be retried, so it must own its data",
        );
    }
}

/// The aggregate's methods are its own; a trait impl cannot add handlers.
fn inherent_impl(cx: &mut Ctxt, item: &ItemImpl) {
    if let Some((_, path, _)) = &item.trait_ {
        cx.error_spanned_by(path, "#[aggregate] goes on an inherent impl block (`impl Account { ... }`), not a trait impl");
    }
}

/// An aggregate is stored under one type name, so it is one type.
fn aggregate_is_not_generic(cx: &mut Ctxt, item: &ItemImpl) {
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "an #[aggregate] cannot be generic: it is stored under one type name",
        );
    }
}

enum Role {
    Handle,
    Apply,
}

/// A method either decides (`#[handle]`) or changes state (`#[apply]`); its role
/// is the marker alone. A method with two markers is reported and left out.
fn role(cx: &mut Ctxt, method: &Method) -> Option<Role> {
    for (i, marker) in method.markers.iter().enumerate() {
        if !matches!(marker.meta, syn::Meta::Path(_)) {
            cx.error_spanned_by(
                marker,
                format_args!(
                    "#[{}] takes no arguments",
                    marker
                        .path()
                        .get_ident()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            );
        }
        if i == 1 {
            cx.error_spanned_by(marker, "a method is either #[handle] or #[apply], not both");
        }
    }
    match method.markers.as_slice() {
        [marker] if marker.path().is_ident("handle") => Some(Role::Handle),
        [_] => Some(Role::Apply),
        _ => None,
    }
}

/// A handler decides from the state, the command and the services, and returns the
/// events or the domain's error: the app calls it with exactly these.
fn handler(cx: &mut Ctxt, sig: &Signature) -> Option<Handler> {
    let mut ok = takes_self(
        cx,
        sig,
        false,
        "a #[handle] method takes `&self`: handlers decide, only #[apply] methods change state",
        "a #[handle] method takes `&self` and the command: `fn name(&self, cmd: Command)`",
    );
    let command = match sig.inputs.iter().nth(1) {
        Some(FnArg::Typed(arg)) => {
            if let Type::Reference(r) = &*arg.ty {
                cx.error_spanned_by(r, "a #[handle] method takes its command by value");
                ok = false;
            }
            Some((*arg.ty).clone())
        }
        _ => {
            if ok {
                cx.error_spanned_by(&sig.ident, "a #[handle] method takes the command it handles: `fn name(&self, cmd: Command)`");
            }
            None
        }
    };
    let services = sig.inputs.iter().nth(2).and_then(|arg| {
        let usage = "after the command, a #[handle] method takes only the aggregate's services, by shared reference: `services: &BankServices`";
        match arg {
            FnArg::Typed(arg) => match &*arg.ty {
                Type::Reference(r) if r.mutability.is_none() => return Some((*r.elem).clone()),
                Type::Reference(r) => {
                    let (and, mutability) = (&r.and_token, &r.mutability);
                    cx.error_spanned_by(
                        quote!(#and #mutability),
                        "a #[handle] method takes the aggregate's services by shared reference, `&`, not `&mut`: every command the app runs at once shares them",
                    );
                }
                other => cx.error_spanned_by(other, usage),
            },
            FnArg::Receiver(r) => cx.error_spanned_by(r, usage),
        }
        ok = false;
        None
    });
    if sig.inputs.len() > 3 {
        let rest = sig.inputs.iter().skip(3);
        cx.error_spanned_by(
            quote!(#(#rest),*),
            "a #[handle] method takes at most two arguments besides `&self`: the command, then a reference to the aggregate's services",
        );
        ok = false;
    }
    let result = match &sig.output {
        ReturnType::Type(_, ty) => result_ok(ty),
        ReturnType::Default => None,
    };
    if result.is_none() {
        let span = match &sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => sig.ident.span(),
        };
        cx.push(syn::Error::new(span, "a #[handle] method returns `Result<Events, Error>`, where Events is an event, `Option`, `Vec`, a tuple of these or `()`"));
    }
    ok &= method_is_not_generic(cx, sig, "a #[handle] method cannot be generic");
    Some(Handler {
        method: sig.ident.clone(),
        command: command?,
        output: result?,
        services,
        asyncness: sig.asyncness,
    })
    .filter(|_| ok)
}

/// Replay is pure and cannot fail: an applier changes the state from a stored
/// event and nothing else.
fn applier(cx: &mut Ctxt, sig: &Signature) -> Option<Applier> {
    let usage = "an #[apply] method takes `&mut self` and a reference to the event: `fn name(&mut self, event: &Event)`";
    let mut ok = takes_self(cx, sig, true, usage, usage);
    let event = match (sig.inputs.iter().nth(1), sig.inputs.len()) {
        (Some(FnArg::Typed(arg)), 2) => match &*arg.ty {
            Type::Reference(r) if r.mutability.is_none() => Some((*r.elem).clone()),
            other => {
                cx.error_spanned_by(other, usage);
                None
            }
        },
        _ => {
            if ok {
                cx.error_spanned_by(&sig.inputs, usage);
            }
            None
        }
    };
    ok &= returns_nothing(
        cx,
        sig,
        "an #[apply] method returns nothing: applying a past event cannot fail",
    ) & not_async_nor_generic(
        cx,
        sig,
        "an #[apply] method is not async: replay must be pure",
        "an #[apply] method cannot be generic",
    );
    Some(Applier {
        method: sig.ident.clone(),
        event: event?,
    })
    .filter(|_| ok)
}

/// The method's first argument is `&mut self` if `mutable`, `&self` otherwise;
/// `wrong` is reported at another receiver, `missing` at a method without one.
fn takes_self(cx: &mut Ctxt, sig: &Signature, mutable: bool, wrong: &str, missing: &str) -> bool {
    match sig.inputs.first() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some()
                && r.mutability.is_some() == mutable
                && r.colon_token.is_none() =>
        {
            true
        }
        Some(FnArg::Receiver(r)) => {
            cx.error_spanned_by(r, wrong);
            false
        }
        _ => {
            cx.error_spanned_by(&sig.ident, missing);
            false
        }
    }
}

/// A method that only changes the state it is called on (an applier, an in-memory
/// projection's `#[on]`) returns nothing; otherwise `message` is reported.
fn returns_nothing(cx: &mut Ctxt, sig: &Signature, message: &str) -> bool {
    match &sig.output {
        ReturnType::Type(_, ty) if !matches!(&**ty, Type::Tuple(t) if t.elems.is_empty()) => {
            cx.error_spanned_by(ty, message);
            false
        }
        _ => true,
    }
}

/// The runtime calls a marked method without awaiting it (`asynchronous` says
/// why), through one impl per event type (`generic` is reported otherwise).
fn not_async_nor_generic(
    cx: &mut Ctxt,
    sig: &Signature,
    asynchronous: &str,
    generic: &str,
) -> bool {
    let not_async = match &sig.asyncness {
        Some(asyncness) => {
            cx.error_spanned_by(asyncness, asynchronous);
            false
        }
        None => true,
    };
    method_is_not_generic(cx, sig, generic) && not_async
}

/// The app calls a marked method through one impl per command or event type, so
/// its types are fixed.
fn method_is_not_generic(cx: &mut Ctxt, sig: &Signature, message: &str) -> bool {
    if sig.generics.params.is_empty() {
        return true;
    }
    cx.error_spanned_by(&sig.generics, message);
    false
}

/// Routing is by command type, so one command cannot go to two methods.
/// The later handlers expand to nothing.
fn one_handler_per_command(cx: &mut Ctxt, handlers: &[Handler], expand: &mut [Expand]) {
    for (i, h) in handlers.iter().enumerate() {
        if let Some(first) = handlers[..i]
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
fn one_applier_per_event(cx: &mut Ctxt, appliers: &[Applier]) {
    for (i, a) in appliers.iter().enumerate() {
        if let Some(first) = appliers[..i]
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
        } else if let Some(first) = appliers[..i].iter().find(|f| {
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
fn returned_events_are_applied(
    cx: &mut Ctxt,
    handlers: &[Handler],
    appliers: &[Applier],
    self_name: &str,
    enum_name: &Ident,
    expand: &mut [Expand],
) {
    for (i, h) in handlers.iter().enumerate() {
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
            if !appliers.iter().any(|a| applies(a, leaf)) {
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
fn services_are_declared(
    cx: &mut Ctxt,
    handlers: &[Handler],
    declared: Option<&Type>,
    self_name: &str,
    expand: &mut [Expand],
) {
    if declared.is_some() {
        return;
    }
    for (i, h) in handlers.iter().enumerate() {
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

/// Handlers reject commands with the aggregate's error type, so they need one.
/// Without it every handler expands to a stub.
fn error_is_declared(
    cx: &mut Ctxt,
    handlers: &[Handler],
    args: &AggregateArgs,
    expand: &mut [Expand],
) {
    if args.error.is_none() && !handlers.is_empty() {
        cx.push(syn::Error::new(
            Span::call_site(),
            "#[aggregate] needs the error type its handlers reject commands with: `#[aggregate(error = AccountError)]`",
        ));
        expand.iter_mut().for_each(|e| *e = stub(*e));
    }
}

/// The snapshot version versions snapshots, which only `snapshot_every` turns on.
fn snapshot_version_goes_with_snapshot_every(cx: &mut Ctxt, args: &AggregateArgs) {
    if let (None, Some((_, lit))) = (&args.snapshot_every, &args.snapshot_version) {
        cx.error_spanned_by(lit, "`snapshot_version` goes with `snapshot_every = N`");
    }
}

/// `Full` becomes `Stub`; `Nothing` stays.
fn stub(expand: Expand) -> Expand {
    match expand {
        Expand::Full => Expand::Stub,
        other => other,
    }
}

fn applies(applier: &Applier, event: &Type) -> bool {
    type_key(&applier.event) == type_key(event)
        || (last_ident(&applier.event).is_some() && last_ident(&applier.event) == last_ident(event))
}

/// The appliers that become the event enum's variants, named after their event's
/// last path segment: the first of each name.
fn variants(appliers: Vec<Applier>) -> Vec<(Ident, Applier)> {
    let mut variants: Vec<(Ident, Applier)> = Vec::new();
    for applier in appliers {
        let Some(variant) = last_ident(&applier.event).cloned() else {
            continue;
        };
        if variants.iter().all(|(seen, _)| *seen != variant) {
            variants.push((variant, applier));
        }
    }
    variants
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

/// An `#[on]` method of a projection or a policy whose signature fits.
pub(crate) struct On {
    pub(crate) method: Ident,
    pub(crate) event: Type,
    /// The type of its argument `&RecordedEvent`, when it takes one.
    pub(crate) envelope: Option<Type>,
    /// The `T` of a last argument `&T` that is a transaction: a SQLite or
    /// PostgreSQL read model's.
    pub(crate) transaction: Option<Type>,
    /// `async fn`: a PostgreSQL read model's (with a transaction).
    pub(crate) asyncness: Option<Token![async]>,
    /// Its return type, when it must have one: a SQLite or PostgreSQL read
    /// model's `Result`, a policy's commands.
    pub(crate) output: Option<Type>,
}

/// Where a projection keeps its read model, as its `#[on]` methods' signatures say.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadModel {
    Memory,
    Sqlite,
    Postgres,
}

impl ReadModel {
    /// A transaction says the read model is in a database; which one cannot be
    /// told from the transaction's name (both drivers call it `Transaction`),
    /// so the driver's way of waiting does: SQLite's blocks, PostgreSQL's is
    /// awaited.
    fn of(on: &On) -> Self {
        match (&on.transaction, &on.asyncness) {
            (None, _) => ReadModel::Memory,
            (Some(_), None) => ReadModel::Sqlite,
            (Some(_), Some(_)) => ReadModel::Postgres,
        }
    }

    /// What an `#[on]` method of this kind does, for messages.
    fn what(self) -> &'static str {
        match self {
            ReadModel::Memory => "keeps the projection in memory (it takes no transaction)",
            ReadModel::Sqlite => {
                "writes to a SQLite read model (it takes a transaction and is not async)"
            }
            ReadModel::Postgres => {
                "writes to a PostgreSQL read model (it is async and takes a transaction)"
            }
        }
    }
}

/// What a `#[projection]` or a `#[policy]` may expand to once checked.
pub(crate) struct CheckedReadSide {
    /// Its stored name.
    pub(crate) name: String,
    /// The `#[on]` methods that fit, one per event type (and, in a projection, all
    /// of one kind).
    pub(crate) handlers: Vec<On>,
    /// A projection's `#[reset]` method, if it has one that fits its kind.
    pub(crate) reset: Option<Reset>,
}

/// A `#[reset]` method whose signature fits its projection's kind.
pub(crate) struct Reset {
    pub(crate) method: Ident,
    /// The `T` of its argument `tx: &T`.
    pub(crate) transaction: Type,
    /// Its return type.
    pub(crate) output: Type,
}

/// What `#[projection]` and `#[policy]` tell apart in the rules they share.
struct ReadSideMacro {
    /// The attribute's name.
    attr: &'static str,
    /// A type it goes on, for examples.
    example: &'static str,
    /// An `#[on]` method, for examples.
    on: &'static str,
}

const PROJECTION: ReadSideMacro = ReadSideMacro {
    attr: "projection",
    example: "Directory",
    on: "#[on] fn name(&mut self, event: &Event)",
};

const POLICY: ReadSideMacro = ReadSideMacro {
    attr: "policy",
    example: "AddressChecks",
    on: "#[on] fn name(&self, event: &Event) -> Option<Command>",
};

/// Checks a `#[projection]` block: what it expands to and its kind of read model,
/// or `None` if it cannot be expanded (then it is emitted without its markers).
pub(crate) fn projection(
    cx: &mut Ctxt,
    projection: &Projection,
) -> Option<(CheckedReadSide, ReadModel)> {
    let name = projection.args.name.as_ref();
    let mut checked = read_side(cx, projection, name, &PROJECTION, projection_on)?;
    let kind = one_read_model(cx, &mut checked.handlers);
    // Without a fitting #[on] method the kind is unknown: the #[reset] method
    // is checked once there is one.
    if !checked.handlers.is_empty() {
        checked.reset = one_reset(cx, projection, kind);
    }
    Some((checked, kind))
}

/// Checks a `#[policy]` block, or returns `None` if it cannot be expanded (then it
/// is emitted without its markers).
pub(crate) fn policy(cx: &mut Ctxt, policy: &Policy) -> Option<CheckedReadSide> {
    policy_has_no_reset(cx, policy);
    read_side(cx, policy, policy.args.name.as_ref(), &POLICY, policy_on)
}

/// A policy keeps no read model to empty: its runner only executes commands.
fn policy_has_no_reset(cx: &mut Ctxt, policy: &Policy) {
    for reset in &policy.resets {
        for marker in &reset.markers {
            cx.error_spanned_by(
                marker,
                "#[reset] goes in a #[projection] kept in a database: a #[policy] keeps no read model to empty",
            );
        }
    }
}

const SQLITE_RESET: &str = "a #[reset] method of a SQLite read model takes `&mut self` and the runner's transaction, and empties the read model's tables: `fn reset(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()>`";

const POSTGRES_RESET: &str = "a #[reset] method of a PostgreSQL read model takes `&mut self` and the runner's transaction, and empties the read model's tables: `async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error>`";

/// A read model in a database is rebuilt by emptying it, in the runner's
/// transaction, with its one `#[reset]` method; an in-memory projection is
/// rebuilt at every start without one. Methods after the first are reported
/// and left out.
fn one_reset(cx: &mut Ctxt, projection: &Projection, kind: ReadModel) -> Option<Reset> {
    let mut found: Option<(Ident, Option<Reset>)> = None;
    for method in &projection.resets {
        let marker = &method.markers[0];
        for extra in &method.markers {
            if !matches!(extra.meta, syn::Meta::Path(_)) {
                cx.error_spanned_by(extra, "#[reset] takes no arguments");
            }
        }
        if projection
            .methods
            .iter()
            .any(|on| on.sig.ident == method.sig.ident)
        {
            cx.error_spanned_by(marker, "a method is either #[on] or #[reset], not both");
            continue;
        }
        if let Some((first, _)) = &found {
            cx.error_spanned_by(
                marker,
                format_args!("only one #[reset] method: `{first}` already empties the read model"),
            );
            continue;
        }
        if kind == ReadModel::Memory {
            cx.error_spanned_by(
                marker,
                "an in-memory projection has no #[reset] method: its runner rebuilds it from the log at every start; #[reset] empties the tables of a SQLite or PostgreSQL read model",
            );
            found = Some((method.sig.ident.clone(), None));
            continue;
        }
        let reset = reset_method(cx, &method.sig, kind);
        found = Some((method.sig.ident.clone(), reset));
    }
    found.and_then(|(_, reset)| reset)
}

/// The runner calls the `#[reset]` method with the transaction it commits, and
/// awaits it as it awaits the `#[on]` methods of the same kind.
fn reset_method(cx: &mut Ctxt, sig: &Signature, kind: ReadModel) -> Option<Reset> {
    let usage = match kind {
        ReadModel::Postgres => POSTGRES_RESET,
        _ => SQLITE_RESET,
    };
    let mut ok = takes_self(cx, sig, true, usage, usage);
    let transaction = match (sig.inputs.iter().nth(1), sig.inputs.len()) {
        (Some(arg), 2) => match self::transaction(arg) {
            Some(TypeReference {
                and_token,
                mutability: Some(mutability),
                ..
            }) => {
                cx.error_spanned_by(
                    quote!(#and_token #mutability),
                    "a #[reset] method takes the transaction by shared reference, `tx: &Transaction<'_>`: its runner commits it",
                );
                None
            }
            Some(r) => Some((*r.elem).clone()),
            None => {
                cx.error_spanned_by(arg, usage);
                None
            }
        },
        (_, 0 | 1) => {
            if ok {
                cx.error_spanned_by(&sig.ident, usage);
            }
            None
        }
        _ => {
            let rest = sig.inputs.iter().skip(1);
            cx.error_spanned_by(quote!(#(#rest),*), usage);
            None
        }
    };
    match (kind, &sig.asyncness) {
        (ReadModel::Sqlite, Some(asyncness)) => {
            cx.error_spanned_by(
                asyncness,
                "the #[reset] method of a SQLite read model is not async, as its #[on] methods: `fn reset(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()>`",
            );
            ok = false;
        }
        (ReadModel::Postgres, None) => {
            cx.error_spanned_by(
                &sig.ident,
                "the #[reset] method of a PostgreSQL read model is async, as its #[on] methods: `async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error>`",
            );
            ok = false;
        }
        _ => {}
    }
    let output = declared_output(
        cx,
        sig,
        "a #[reset] method returns `Result<(), E>`, like `rusqlite::Result<()>` or `Result<(), tokio_postgres::Error>`: its runner commits the emptied read model only if it succeeded",
        &mut ok,
    );
    ok &= method_is_not_generic(cx, sig, "a #[reset] method cannot be generic");
    Some(Reset {
        method: sig.ident.clone(),
        transaction: transaction?,
        output: output?,
    })
    .filter(|_| ok)
}

/// The rules `#[projection]` and `#[policy]` share: a runner of their own keeps a
/// checkpoint under one name and routes each stored event to one `#[on]` method.
/// `on_method` checks a method's signature.
fn read_side<A>(
    cx: &mut Ctxt,
    input: &ReadSide<A>,
    name: Option<&LitStr>,
    which: &ReadSideMacro,
    on_method: fn(&mut Ctxt, &Signature) -> Option<On>,
) -> Option<CheckedReadSide> {
    let ReadSideMacro { attr, example, on } = which;
    let item = &input.item;
    if let Some((_, path, _)) = &item.trait_ {
        cx.error_spanned_by(
            path,
            format_args!("#[{attr}] goes on an inherent impl block (`impl {example} {{ ... }}`), not a trait impl"),
        );
    }
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            format_args!("a #[{attr}] cannot be generic: its checkpoint is kept under one name"),
        );
    }
    let Some(ident) = &input.ident else {
        cx.error_spanned_by(
            &item.self_ty,
            format_args!("#[{attr}] needs a named struct type: `impl {example} {{ ... }}`"),
        );
        return None;
    };
    if input.methods.is_empty() {
        cx.error_spanned_by(
            &item.self_ty,
            format_args!("a #[{attr}] needs at least one #[on] method: `{on}`"),
        );
    }
    let mut handlers: Vec<On> = Vec::new();
    for method in &input.methods {
        for marker in &method.markers {
            if !matches!(marker.meta, syn::Meta::Path(_)) {
                cx.error_spanned_by(marker, "#[on] takes no arguments");
            }
        }
        let Some(on) = on_method(cx, &method.sig) else {
            continue;
        };
        if let Some(first) = handlers
            .iter()
            .find(|h| type_key(&h.event) == type_key(&on.event))
        {
            cx.error_spanned_by(
                &on.event,
                format_args!(
                    "event `{}` is already handled by `{}`: one #[on] method per event",
                    type_key(&on.event),
                    first.method
                ),
            );
            continue;
        }
        handlers.push(on);
    }
    if let Some(name) = name.filter(|name| name.value().is_empty()) {
        cx.error_spanned_by(name, format_args!("a {attr}'s `name` cannot be empty"));
    }
    let name = name.map_or_else(|| ident.unraw().to_string(), LitStr::value);
    Some(CheckedReadSide {
        name,
        handlers,
        reset: None,
    })
}

/// A projection's runner keeps one read model, in memory, in SQLite or in
/// PostgreSQL: the first `#[on]` method's kind is the projection's, and
/// methods of another kind are reported and left out.
fn one_read_model(cx: &mut Ctxt, handlers: &mut Vec<On>) -> ReadModel {
    let Some(first) = handlers.first() else {
        return ReadModel::Memory;
    };
    let (kind, first) = (ReadModel::of(first), first.method.clone());
    handlers.retain(|on| {
        let this = ReadModel::of(on);
        if this == kind {
            return true;
        }
        let method = &on.method;
        let how = match (kind, this) {
            (ReadModel::Sqlite, ReadModel::Memory) => "; add `tx: &Transaction<'_>` as the last argument and return `rusqlite::Result<()>`",
            (ReadModel::Postgres, ReadModel::Memory) => "; make it `async`, add `tx: &Transaction<'_>` as the last argument and return `Result<(), tokio_postgres::Error>`",
            (ReadModel::Postgres, ReadModel::Sqlite) => "; make it `async` and take `tx: &eda::tokio_postgres::Transaction<'_>`",
            (ReadModel::Sqlite, ReadModel::Postgres) => "; remove `async` and take `tx: &eda::rusqlite::Transaction<'_>`",
            _ => "",
        };
        let message = format!(
            "`{method}` {}, but `{first}` {}: the #[on] methods of a projection all keep one kind of read model{how}",
            this.what(),
            kind.what(),
        );
        // At what makes it another kind: its transaction, its `async`, or
        // (for what it lacks) its name.
        match (this, &on.transaction, &on.asyncness) {
            (ReadModel::Postgres, _, Some(asyncness)) if kind == ReadModel::Sqlite => {
                cx.error_spanned_by(asyncness, message)
            }
            (_, Some(tx), _) if kind == ReadModel::Memory => cx.error_spanned_by(tx, message),
            _ => cx.error_spanned_by(method, message),
        }
        false
    });
    kind
}

/// The `T` of an argument `&T`; otherwise the argument's type, if it has one.
fn by_reference(arg: Option<&FnArg>) -> Result<Type, Option<&Type>> {
    match arg {
        Some(FnArg::Typed(arg)) => match &*arg.ty {
            Type::Reference(r) if r.mutability.is_none() => Ok((*r.elem).clone()),
            other => Err(Some(other)),
        },
        _ => Err(None),
    }
}

/// An argument that is a reference to a type whose path ends in `Transaction`, as
/// a database read model's `#[on]` methods take, or in `PostgresBatch`, as a
/// PostgreSQL read model's may take instead.
fn transaction(arg: &FnArg) -> Option<&TypeReference> {
    let FnArg::Typed(arg) = arg else { return None };
    let Type::Reference(r) = &*arg.ty else {
        return None;
    };
    last_ident(&r.elem)
        .is_some_and(|ident| ident == "Transaction" || ident == BATCH)
        .then_some(r)
}

/// The name of the PostgreSQL batch (`eda::PostgresBatch`).
const BATCH: &str = "PostgresBatch";

/// Whether `tx` (a transaction's type) is the PostgreSQL batch, which only an
/// async method takes.
fn is_batch(tx: &TypeReference) -> bool {
    last_ident(&tx.elem).is_some_and(|ident| ident == BATCH)
}

const MEMORY_ON: &str = "an #[on] method takes `&mut self`, a reference to the event and, if it needs it, the recorded event: `fn name(&mut self, event: &Event, recorded: &RecordedEvent)`";

const SQLITE_ON: &str = "an #[on] method of a SQLite read model takes `&mut self`, a reference to the event, the recorded event if it needs it, and the transaction last: `fn name(&mut self, event: &Event, recorded: &RecordedEvent, tx: &Transaction<'_>) -> rusqlite::Result<()>`";

const POSTGRES_ON: &str = "an #[on] method of a PostgreSQL read model takes `&mut self`, a reference to the event, the recorded event if it needs it, and the transaction last: `async fn name(&mut self, event: &Event, recorded: &RecordedEvent, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error>`";

const POLICY_ON: &str = "an #[on] method of a #[policy] takes `&self`, a reference to the event and, if it needs it, the recorded event: `fn name(&self, event: &Event, recorded: &RecordedEvent) -> Option<Command>`";

/// A projection's `#[on]` method takes `&mut self`, the event by reference and, if
/// it wants it, the recorded event; in memory it returns nothing, while a
/// database read model's also takes the runner's transaction, last, and returns
/// whether its writes succeeded: SQLite's blocks, PostgreSQL's is `async`. The
/// runner calls it with exactly these.
fn projection_on(cx: &mut Ctxt, sig: &Signature) -> Option<On> {
    let transaction = sig.inputs.last().and_then(transaction);
    let asyncness = sig.asyncness;
    let usage = match (transaction.is_some(), asyncness.is_some()) {
        (true, true) => POSTGRES_ON,
        (true, false) => SQLITE_ON,
        (false, _) => MEMORY_ON,
    };
    let mut ok = takes_self(cx, sig, true, usage, usage);
    let before_last = sig.inputs.iter().rev().skip(1);
    if let Some(misplaced) = before_last
        .filter(|arg| self::transaction(arg).is_some())
        .last()
    {
        let example = match asyncness {
            Some(_) => "async fn name(&mut self, event: &Event, recorded: &RecordedEvent, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error>",
            None => "fn name(&mut self, event: &Event, recorded: &RecordedEvent, tx: &Transaction<'_>) -> rusqlite::Result<()>",
        };
        cx.error_spanned_by(
            misplaced,
            format_args!("the transaction goes last: `{example}`"),
        );
        return None;
    }
    // The runner commits the transaction after the method, which only writes in it.
    if let Some(TypeReference {
        and_token,
        mutability: Some(mutability),
        ..
    }) = transaction
    {
        cx.error_spanned_by(
            quote!(#and_token #mutability),
            "an #[on] method takes the transaction by shared reference, `tx: &Transaction<'_>`: its runner commits it",
        );
        ok = false;
    }
    if let (Some(tx), None) = (transaction, asyncness) {
        if is_batch(tx) {
            cx.error_spanned_by(
                tx,
                "`PostgresBatch` is a PostgreSQL read model's, whose #[on] methods are async: `async fn name(&mut self, event: &Event, recorded: &RecordedEvent, tx: &PostgresBatch<'_>) -> Result<(), tokio_postgres::Error>`",
            );
            ok = false;
        }
    }
    let transaction = transaction.map(|r| (*r.elem).clone());
    let (event, envelope) =
        on_arguments(cx, sig, usize::from(transaction.is_some()), usage, &mut ok);
    let output = match (&transaction, asyncness) {
        // Whatever it returns, the mistake is the `async` or the missing
        // transaction.
        (None, Some(asyncness)) => {
            cx.error_spanned_by(
                asyncness,
                "an async #[on] method writes to a PostgreSQL read model, so it takes the runner's transaction last: `async fn name(&mut self, event: &Event, recorded: &RecordedEvent, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error>`; in memory, #[on] methods are not async",
            );
            ok = false;
            None
        }
        (None, None) => {
            ok &= returns_nothing(
                cx,
                sig,
                "an #[on] method of an in-memory projection returns nothing",
            );
            None
        }
        (Some(_), None) => declared_output(
            cx,
            sig,
            "an #[on] method of a SQLite read model returns `Result<(), E>`, like `rusqlite::Result<()>`: its runner commits the event's writes only if it succeeded",
            &mut ok,
        ),
        (Some(_), Some(_)) => declared_output(
            cx,
            sig,
            "an #[on] method of a PostgreSQL read model returns `Result<(), E>`, like `Result<(), tokio_postgres::Error>`: its runner commits the event's writes only if it succeeded",
            &mut ok,
        ),
    };
    ok &= method_is_not_generic(cx, sig, "an #[on] method cannot be generic");
    Some(On {
        method: sig.ident.clone(),
        event: event?,
        envelope,
        transaction,
        asyncness,
        output,
    })
    .filter(|_| ok)
}

/// A policy's `#[on]` method decides from the event alone, as an event may reach
/// it again after a restart, and returns the commands its runner is to execute.
fn policy_on(cx: &mut Ctxt, sig: &Signature) -> Option<On> {
    let mut ok = takes_self(
        cx,
        sig,
        false,
        "an #[on] method of a #[policy] takes `&self`: a policy decides from the event alone, as an event may reach it again after a restart (keep state in a #[projection])",
        POLICY_ON,
    );
    let (event, envelope) = on_arguments(cx, sig, 0, POLICY_ON, &mut ok);
    let output = declared_output(
        cx,
        sig,
        "an #[on] method of a #[policy] returns the commands to execute: `Option<C>`, `Vec<C>`, a command `C`, or a tuple of these",
        &mut ok,
    );
    ok &= not_async_nor_generic(
        cx,
        sig,
        "an #[on] method of a #[policy] is not async: it only decides which commands to execute, and its runner executes them",
        "an #[on] method cannot be generic",
    );
    Some(On {
        method: sig.ident.clone(),
        event: event?,
        envelope,
        transaction: None,
        asyncness: None,
        output,
    })
    .filter(|_| ok)
}

/// The return type of a method whose result the runtime uses; a method without
/// one is reported with `message`.
fn declared_output(cx: &mut Ctxt, sig: &Signature, message: &str, ok: &mut bool) -> Option<Type> {
    match &sig.output {
        ReturnType::Type(_, ty) => Some((**ty).clone()),
        ReturnType::Default => {
            cx.error_spanned_by(&sig.ident, message);
            *ok = false;
            None
        }
    }
}

/// The event and, if there is one, the recorded event an `#[on]` method takes
/// after its receiver and before the last `extra` arguments; `usage` is reported
/// where they do not fit.
fn on_arguments(
    cx: &mut Ctxt,
    sig: &Signature,
    extra: usize,
    usage: &str,
    ok: &mut bool,
) -> (Option<Type>, Option<Type>) {
    let args: Vec<&FnArg> = sig.inputs.iter().take(sig.inputs.len() - extra).collect();
    let event = match by_reference(args.get(1).copied()) {
        Ok(event) => Some(event),
        Err(found) => {
            match found {
                Some(ty) => cx.error_spanned_by(ty, usage),
                None if *ok => cx.error_spanned_by(&sig.inputs, usage),
                None => {}
            }
            None
        }
    };
    let envelope = match &args[..] {
        [] | [_] | [_, _] => None,
        [_, _, recorded] => match by_reference(Some(recorded)) {
            Ok(recorded) => Some(recorded),
            Err(found) => {
                cx.error_spanned_by(found.map_or_else(|| quote!(#sig), |ty| quote!(#ty)), usage);
                *ok = false;
                None
            }
        },
        [_, _, _, rest @ ..] => {
            cx.error_spanned_by(quote!(#(#rest),*), usage);
            *ok = false;
            None
        }
    };
    (event, envelope)
}
