//! A typed model of each macro's input: its attribute arguments and the item, read
//! into structs that keep the user's tokens for spans.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::Parse;
use syn::spanned::Spanned;
use syn::{
    Attribute, DeriveInput, FnArg, Ident, ImplItem, ImplItemFn, Member, ReturnType, Token, Type,
};

use crate::attr::{self, CommandArgs, EventArgs};
use crate::ctxt::Ctxt;
use crate::types::result_ok;

/// An `#[event]` item.
pub(crate) struct Event {
    pub(crate) args: EventArgs,
    pub(crate) item: DeriveInput,
}

/// A `#[command]` item.
pub(crate) struct Command {
    pub(crate) args: CommandArgs,
    /// The item without its `#[aggregate_id]` markers, which `ids` holds.
    pub(crate) item: DeriveInput,
    /// A struct's fields marked `#[aggregate_id]`, in order.
    pub(crate) ids: Vec<AggregateId>,
}

/// A field marked `#[aggregate_id]`.
pub(crate) struct AggregateId {
    /// Its marker; the last one if the field has several.
    pub(crate) marker: Attribute,
    pub(crate) member: Member,
    pub(crate) ty: Type,
    /// The field without its markers.
    pub(crate) span: Span,
}

impl Event {
    /// Reads the arguments, then the item; input that is no struct, enum or union is
    /// reported and handed back as written.
    pub(crate) fn from_syn(
        cx: &mut Ctxt,
        args: TokenStream,
        input: TokenStream,
    ) -> Result<Self, TokenStream> {
        let args = attr::event_args(cx, args);
        let item = parse_item(cx, input, "#[event] goes on a struct")?;
        Ok(Event { args, item })
    }
}

impl Command {
    /// Reads the arguments, then the item, taking the `#[aggregate_id]` markers off
    /// a struct's fields; input that is no struct, enum or union is reported and
    /// handed back as written.
    pub(crate) fn from_syn(
        cx: &mut Ctxt,
        args: TokenStream,
        input: TokenStream,
    ) -> Result<Self, TokenStream> {
        let args = attr::command_args(cx, args);
        let mut item: DeriveInput = parse_item(cx, input, "#[command] goes on a struct")?;
        let mut ids = Vec::new();
        if let syn::Data::Struct(data) = &mut item.data {
            for (index, field) in data.fields.iter_mut().enumerate() {
                let mut marker = None;
                field.attrs.retain(|attr| {
                    let is_id = attr.path().is_ident("aggregate_id");
                    if is_id {
                        marker = Some(attr.clone());
                    }
                    !is_id
                });
                if let Some(marker) = marker {
                    let member = match &field.ident {
                        Some(ident) => Member::Named(ident.clone()),
                        None => Member::Unnamed(syn::Index::from(index)),
                    };
                    ids.push(AggregateId {
                        marker,
                        member,
                        ty: field.ty.clone(),
                        span: field.span(),
                    });
                }
            }
        }
        Ok(Command { args, item, ids })
    }
}

/// `input` as an item `T`; otherwise `message` is reported and `input` handed back.
fn parse_item<T: Parse>(
    cx: &mut Ctxt,
    input: TokenStream,
    message: &str,
) -> Result<T, TokenStream> {
    syn::parse2(input.clone()).map_err(|_| {
        cx.push(syn::Error::new(input.span(), message));
        input
    })
}

/// One `#[handle]` method.
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

/// One `#[apply]` method.
pub(crate) struct Applier {
    pub(crate) method: Ident,
    pub(crate) event: Type,
}

/// What an `#[aggregate]` impl block declares.
pub(crate) struct AggregateImpl {
    pub(crate) item: syn::ItemImpl,
    pub(crate) handlers: Vec<Handler>,
    pub(crate) appliers: Vec<Applier>,
}

enum Role {
    Handle,
    Apply,
    /// Reported; the method is left out of the model.
    Both,
}

impl AggregateImpl {
    /// Reads the block, stripping the `#[handle]` / `#[apply]` markers; methods whose
    /// signature does not fit are reported and left out of the model.
    pub(crate) fn from_item(cx: &mut Ctxt, mut item: syn::ItemImpl) -> Self {
        let mut handlers = Vec::new();
        let mut appliers = Vec::new();
        for impl_item in &mut item.items {
            let ImplItem::Fn(method) = impl_item else {
                continue;
            };
            let mut role = None;
            method.attrs.retain(|attr| {
                let found = if attr.path().is_ident("handle") {
                    Role::Handle
                } else if attr.path().is_ident("apply") {
                    Role::Apply
                } else {
                    return true;
                };
                if !matches!(attr.meta, syn::Meta::Path(_)) {
                    cx.error_spanned_by(
                        attr,
                        format_args!(
                            "#[{}] takes no arguments",
                            attr.path()
                                .get_ident()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        ),
                    );
                }
                match role {
                    Some(Role::Both) => {}
                    Some(_) => {
                        cx.error_spanned_by(
                            attr,
                            "a method is either #[handle] or #[apply], not both",
                        );
                        role = Some(Role::Both);
                    }
                    None => role = Some(found),
                }
                false
            });
            match role {
                Some(Role::Handle) => handlers.extend(handler(cx, method)),
                Some(Role::Apply) => appliers.extend(applier(cx, method)),
                Some(Role::Both) | None => {}
            }
        }
        AggregateImpl {
            item,
            handlers,
            appliers,
        }
    }
}

fn handler(cx: &mut Ctxt, method: &ImplItemFn) -> Option<Handler> {
    let sig = &method.sig;
    let mut ok = true;
    match sig.inputs.first() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            cx.error_spanned_by(r, "a #[handle] method takes `&self`: handlers decide, only #[apply] methods change state");
            ok = false;
        }
        _ => {
            cx.error_spanned_by(
                &sig.ident,
                "a #[handle] method takes `&self` and the command: `fn name(&self, cmd: Command)`",
            );
            ok = false;
        }
    }
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
    if !method.sig.generics.params.is_empty() {
        cx.error_spanned_by(&method.sig.generics, "a #[handle] method cannot be generic");
        ok = false;
    }
    Some(Handler {
        method: sig.ident.clone(),
        command: command?,
        output: result?,
        services,
        asyncness: sig.asyncness,
    })
    .filter(|_| ok)
}

fn applier(cx: &mut Ctxt, method: &ImplItemFn) -> Option<Applier> {
    let sig = &method.sig;
    let usage = "an #[apply] method takes `&mut self` and a reference to the event: `fn name(&mut self, event: &Event)`";
    let mut ok = true;
    match sig.inputs.first() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_some() && r.colon_token.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            cx.error_spanned_by(r, usage);
            ok = false;
        }
        _ => {
            cx.error_spanned_by(&sig.ident, usage);
            ok = false;
        }
    }
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
    if let ReturnType::Type(_, ty) = &sig.output {
        let unit = matches!(&**ty, Type::Tuple(t) if t.elems.is_empty());
        if !unit {
            cx.error_spanned_by(
                ty,
                "an #[apply] method returns nothing: applying a past event cannot fail",
            );
            ok = false;
        }
    }
    if let Some(asyncness) = &sig.asyncness {
        cx.error_spanned_by(
            asyncness,
            "an #[apply] method is not async: replay must be pure",
        );
        ok = false;
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(&sig.generics, "an #[apply] method cannot be generic");
        ok = false;
    }
    Some(Applier {
        method: sig.ident.clone(),
        event: event?,
    })
    .filter(|_| ok)
}
