//! A typed model of each macro's input: its attribute arguments and the item, read
//! into structs that keep the user's tokens for spans.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parse;
use syn::spanned::Spanned;
use syn::{Attribute, DeriveInput, Ident, ImplItem, ItemImpl, Member, Signature, Type};

use crate::attr::{self, AggregateArgs, CommandArgs, EventArgs};
use crate::ctxt::Ctxt;

/// A macro's input read into its model or, if it is not the item the macro goes on
/// (the error is in the `Ctxt`), the input as written.
pub(crate) type Parsed<T> = Result<T, TokenStream>;

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
    pub(crate) fn from_syn(cx: &mut Ctxt, args: TokenStream, input: TokenStream) -> Parsed<Self> {
        let args = attr::event_args(cx, args);
        let item = parse_item(cx, input, "#[event] goes on a struct")?;
        Ok(Event { args, item })
    }
}

impl Command {
    /// Reads the arguments, then the item, taking the `#[aggregate_id]` markers off
    /// a struct's fields; input that is no struct, enum or union is reported and
    /// handed back as written.
    pub(crate) fn from_syn(cx: &mut Ctxt, args: TokenStream, input: TokenStream) -> Parsed<Self> {
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

/// An `#[aggregate]` impl block.
pub(crate) struct Aggregate {
    pub(crate) args: AggregateArgs,
    /// The block as written, markers included: a block without a name to expand
    /// under is emitted unchanged.
    pub(crate) item: ItemImpl,
    /// The last segment of the self type, if that is a path: the aggregate's name.
    pub(crate) ident: Option<Ident>,
    /// The methods marked `#[handle]` or `#[apply]`, in order.
    pub(crate) methods: Vec<Method>,
}

/// A method marked `#[handle]` or `#[apply]`.
pub(crate) struct Method {
    /// Its `#[handle]` and `#[apply]` attributes, in order.
    pub(crate) markers: Vec<Attribute>,
    pub(crate) sig: Signature,
}

impl Aggregate {
    /// Reads the arguments, then the block; input that is no impl block is reported
    /// and handed back as written.
    pub(crate) fn from_syn(cx: &mut Ctxt, args: TokenStream, input: TokenStream) -> Parsed<Self> {
        let args = attr::aggregate_args(cx, args);
        let item: ItemImpl = parse_item(
            cx,
            input,
            "#[aggregate] goes on the impl block that holds the #[handle] and #[apply] methods, not on the struct",
        )?;
        let ident = self_ident(&item);
        let methods = marked_methods(&item, is_marker);
        Ok(Aggregate {
            args,
            item,
            ident,
            methods,
        })
    }

    /// The block without its `#[handle]` and `#[apply]` markers, as the compiler is
    /// to see it.
    pub(crate) fn item_without_markers(&self) -> ItemImpl {
        without_markers(&self.item, is_marker)
    }
}

fn is_marker(attr: &Attribute) -> bool {
    attr.path().is_ident("handle") || attr.path().is_ident("apply")
}

/// `input` as an item `T`; otherwise `message` is reported and `input` handed back.
fn parse_item<T: Parse>(cx: &mut Ctxt, input: TokenStream, message: &str) -> Parsed<T> {
    syn::parse2(input.clone()).map_err(|_| {
        cx.push(syn::Error::new(input.span(), message));
        input
    })
}

/// The input of `#[projection]` or `#[policy]`: an impl block and its `#[on]`
/// methods; `A` are the macro's arguments.
pub(crate) struct ReadSide<A> {
    pub(crate) args: A,
    /// The block as written.
    pub(crate) item: ItemImpl,
    /// The self type's last path segment, if it is a path.
    pub(crate) ident: Option<Ident>,
    /// The methods marked `#[on]`, with their markers, in order.
    pub(crate) methods: Vec<Method>,
    /// The methods marked `#[reset]`, with their markers, in order (a
    /// projection may have one).
    pub(crate) resets: Vec<Method>,
}

/// `#[projection]`'s input.
pub(crate) type Projection = ReadSide<attr::ProjectionArgs>;

/// `#[policy]`'s input.
pub(crate) type Policy = ReadSide<attr::PolicyArgs>;

impl Projection {
    /// Reads the arguments, then the block; input that is no impl block is reported
    /// and handed back as written.
    pub(crate) fn from_syn(cx: &mut Ctxt, args: TokenStream, input: TokenStream) -> Parsed<Self> {
        let args = attr::projection_args(cx, args);
        ReadSide::read(cx, args, input, "projection")
    }
}

impl Policy {
    /// Reads the arguments, then the block; input that is no impl block is reported
    /// and handed back as written.
    pub(crate) fn from_syn(cx: &mut Ctxt, args: TokenStream, input: TokenStream) -> Parsed<Self> {
        let args = attr::policy_args(cx, args);
        ReadSide::read(cx, args, input, "policy")
    }
}

impl<A> ReadSide<A> {
    /// The block `input` of `#[macro_name]`, given its parsed arguments.
    fn read(cx: &mut Ctxt, args: A, input: TokenStream, macro_name: &str) -> Parsed<Self> {
        let item: ItemImpl = parse_item(
            cx,
            input,
            &format!("#[{macro_name}] goes on the impl block that holds the #[on] methods, not on the struct"),
        )?;
        let ident = self_ident(&item);
        let methods = marked_methods(&item, is_on_marker);
        let resets = marked_methods(&item, is_reset_marker);
        Ok(ReadSide {
            args,
            item,
            ident,
            methods,
            resets,
        })
    }

    /// The block without its `#[on]` and `#[reset]` markers, as the compiler is
    /// to see it.
    pub(crate) fn item_without_markers(&self) -> ItemImpl {
        without_markers(&self.item, |attr| {
            is_on_marker(attr) || is_reset_marker(attr)
        })
    }
}

/// The last segment of the block's self type, if that is a path: the name the
/// macros expand under.
fn self_ident(item: &ItemImpl) -> Option<Ident> {
    match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
}

fn is_on_marker(attr: &Attribute) -> bool {
    attr.path().is_ident("on")
}

fn is_reset_marker(attr: &Attribute) -> bool {
    attr.path().is_ident("reset")
}

/// The methods of `item` that carry a marker, with their markers.
fn marked_methods(item: &ItemImpl, is_marker: fn(&Attribute) -> bool) -> Vec<Method> {
    item.items
        .iter()
        .filter_map(|item| {
            let ImplItem::Fn(method) = item else {
                return None;
            };
            let markers: Vec<Attribute> = method
                .attrs
                .iter()
                .filter(|a| is_marker(a))
                .cloned()
                .collect();
            (!markers.is_empty()).then(|| Method {
                markers,
                sig: method.sig.clone(),
            })
        })
        .collect()
}

/// `item` without the markers on its methods.
fn without_markers(item: &ItemImpl, is_marker: fn(&Attribute) -> bool) -> ItemImpl {
    let mut item = item.clone();
    for impl_item in &mut item.items {
        if let ImplItem::Fn(method) = impl_item {
            method.attrs.retain(|a| !is_marker(a));
        }
    }
    item
}
