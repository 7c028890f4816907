//! Attribute arguments into typed options.

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Ident, LitInt, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;

/// `#[event(...)]`.
#[derive(Default)]
pub(crate) struct EventArgs {
    pub(crate) name: Option<LitStr>,
    /// `public`: the event leaves the service (the relay publishes it).
    pub(crate) public: Option<Ident>,
    /// `subject = "..."`: where a public event is published.
    pub(crate) subject: Option<LitStr>,
    /// `copy`: a reader's copy of another service's event, not registered.
    pub(crate) copy: Option<Ident>,
    pub(crate) version: Option<(u32, LitInt)>,
    pub(crate) upcast_from: Option<Type>,
    pub(crate) krate: Option<Path>,
}

/// `#[command(...)]`.
#[derive(Default)]
pub(crate) struct CommandArgs {
    pub(crate) krate: Option<Path>,
}

/// `#[aggregate(...)]`.
#[derive(Default)]
pub(crate) struct AggregateArgs {
    pub(crate) id: Option<Type>,
    pub(crate) error: Option<Type>,
    pub(crate) name: Option<LitStr>,
    pub(crate) snapshot_every: Option<(u64, LitInt)>,
    pub(crate) snapshot_version: Option<(u32, LitInt)>,
    pub(crate) services: Option<Type>,
    pub(crate) krate: Option<Path>,
}

/// `#[projection(...)]`.
#[derive(Default)]
pub(crate) struct ProjectionArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<(u64, LitInt)>,
    pub(crate) krate: Option<Path>,
}

/// `#[policy(...)]`.
#[derive(Default)]
pub(crate) struct PolicyArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) krate: Option<Path>,
}

pub(crate) fn projection_args(cx: &mut Ctxt, args: TokenStream) -> ProjectionArgs {
    let mut out = ProjectionArgs::default();
    parse(
        cx,
        args,
        "projection",
        "`name`, `version` or `crate`",
        |cx, meta| {
            if meta.path.is_ident("name") {
                out.name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("version") {
                out.version = positive(cx, meta, "version", "version = 2")?;
            } else if meta.path.is_ident("crate") {
                out.krate = Some(crate_path(meta)?);
            } else {
                return Ok(false);
            }
            Ok(true)
        },
    );
    out
}

pub(crate) fn policy_args(cx: &mut Ctxt, args: TokenStream) -> PolicyArgs {
    let mut out = PolicyArgs::default();
    parse(cx, args, "policy", "`name` or `crate`", |_, meta| {
        if meta.path.is_ident("name") {
            out.name = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("crate") {
            out.krate = Some(crate_path(meta)?);
        } else {
            return Ok(false);
        }
        Ok(true)
    });
    out
}

pub(crate) fn event_args(cx: &mut Ctxt, args: TokenStream) -> EventArgs {
    let mut out = EventArgs::default();
    parse(
        cx,
        args,
        "event",
        "`name`, `version`, `upcast_from`, `public`, `subject`, `copy` or `crate`",
        |cx, meta| {
            if meta.path.is_ident("name") {
                out.name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("public") {
                if meta.input.peek(Token![=]) {
                    cx.error_spanned_by(
                        &meta.path,
                        "`public` takes no value: `#[event(public)]`, and `subject = \"...\"` to name where it is published",
                    );
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                out.public = meta.path.get_ident().cloned();
            } else if meta.path.is_ident("copy") {
                if meta.input.peek(Token![=]) {
                    cx.error_spanned_by(
                        &meta.path,
                        "`copy` takes no value: `#[event(name = \"...\", copy)]`",
                    );
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                out.copy = meta.path.get_ident().cloned();
            } else if meta.path.is_ident("subject") {
                out.subject = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("version") {
                let value = meta.value()?;
                let lit: syn::Lit = value.parse()?;
                match &lit {
                    syn::Lit::Int(int) => match int.base10_parse::<u32>() {
                        Ok(0) => cx.error_spanned_by(int, "`version` starts at 1"),
                        Ok(v) => out.version = Some((v, int.clone())),
                        Err(_) => cx.error_spanned_by(int, "`version` must fit in a `u32`"),
                    },
                    other => cx.error_spanned_by(
                        other,
                        "`version` must be an integer, like `version = 2`",
                    ),
                }
            } else if meta.path.is_ident("upcast_from") {
                out.upcast_from = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("crate") {
                out.krate = Some(crate_path(meta)?);
            } else {
                return Ok(false);
            }
            Ok(true)
        },
    );
    out
}

pub(crate) fn command_args(cx: &mut Ctxt, args: TokenStream) -> CommandArgs {
    let mut out = CommandArgs::default();
    parse(cx, args, "command", "`crate`", |_, meta| {
        if meta.path.is_ident("crate") {
            out.krate = Some(crate_path(meta)?);
            return Ok(true);
        }
        Ok(false)
    });
    out
}

pub(crate) fn aggregate_args(cx: &mut Ctxt, args: TokenStream) -> AggregateArgs {
    let mut out = AggregateArgs::default();
    parse(
        cx,
        args,
        "aggregate",
        "`id`, `error`, `services`, `name`, `snapshot_every`, `snapshot_version` or `crate`",
        |cx, meta| {
            if meta.path.is_ident("services") {
                let services = a_type(cx, meta, "services", "services = BankServices")?;
                if out.services.is_some() {
                    cx.error_spanned_by(&meta.path, "`services` is given twice; an aggregate has one services type (a struct can hold several services)");
                } else {
                    out.services = services;
                }
            } else if meta.path.is_ident("snapshot_every") {
                out.snapshot_every = positive(cx, meta, "snapshot_every", "snapshot_every = 100")?;
            } else if meta.path.is_ident("snapshot_version") {
                out.snapshot_version =
                    positive(cx, meta, "snapshot_version", "snapshot_version = 2")?
                        .and_then(|(v, lit)| u32::try_from(v).ok().map(|v| (v, lit)));
            } else if meta.path.is_ident("id") {
                out.id = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("error") {
                out.error = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("name") {
                out.name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("crate") {
                out.krate = Some(crate_path(meta)?);
            } else {
                return Ok(false);
            }
            Ok(true)
        },
    );
    out
}

/// Runs `known` on each `key = value`; keys it does not take are reported with the
/// keys that exist, and skipped so that the others are still checked.
fn parse(
    cx: &mut Ctxt,
    args: TokenStream,
    macro_name: &str,
    expected: &str,
    mut known: impl FnMut(&mut Ctxt, &ParseNestedMeta<'_>) -> syn::Result<bool>,
) {
    let mut unknown = Vec::new();
    let parser = syn::meta::parser(|meta| {
        if known(cx, &meta)? {
            return Ok(());
        }
        unknown.push(meta.error(format_args!(
            "unknown #[{macro_name}] argument `{}`; expected {expected}",
            meta.path.get_ident().map_or_else(|| "?".to_owned(), ToString::to_string)
        )));
        if meta.input.peek(Token![=]) {
            meta.value()?.parse::<syn::Expr>()?;
        } else if meta.input.peek(syn::token::Paren) {
            meta.parse_nested_meta(|nested| {
                if nested.input.peek(Token![=]) {
                    nested.value()?.parse::<syn::Expr>()?;
                }
                Ok(())
            })?;
        }
        Ok(())
    });
    if let Err(e) = parser.parse2(args) {
        cx.push(e);
    }
    for e in unknown {
        cx.push(e);
    }
}

/// `key = N` with N a positive integer; a bad value is reported and gives `None`.
fn positive(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
) -> syn::Result<Option<(u64, LitInt)>> {
    let lit: syn::Lit = meta.value()?.parse()?;
    Ok(match &lit {
        syn::Lit::Int(int) => match int.base10_parse::<u64>() {
            Ok(0) => {
                cx.error_spanned_by(int, format_args!("`{key}` must be at least 1"));
                None
            }
            Ok(v) if key.ends_with("version") && u32::try_from(v).is_err() => {
                cx.error_spanned_by(int, format_args!("`{key}` must fit in a `u32`"));
                None
            }
            Ok(v) => Some((v, int.clone())),
            Err(_) => {
                cx.error_spanned_by(int, format_args!("`{key}` must fit in a `u64`"));
                None
            }
        },
        other => {
            cx.error_spanned_by(
                other,
                format_args!("`{key}` must be an integer, like `{example}`"),
            );
            None
        }
    })
}

/// `key = Type`; a literal is reported and gives `None`, so the other arguments are
/// still checked.
fn a_type(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
) -> syn::Result<Option<Type>> {
    let value = meta.value()?;
    if value.peek(syn::Lit) {
        let lit: syn::Lit = value.parse()?;
        cx.error_spanned_by(lit, format_args!("`{key}` takes a type, like `{example}`"));
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| {
        syn::Error::new(
            e.span(),
            format_args!("`{key}` takes a type, like `{example}`"),
        )
    })
}

/// `crate = path` or `crate = "path"`.
fn crate_path(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        value.parse::<LitStr>()?.parse()
    } else {
        Path::parse_mod_style(value)
    }
}
