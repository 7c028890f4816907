//! Helpers on `syn::Type`: its identity for "same type" checks, its last path
//! segment, its text in messages, the `Ok` type of a `Result`.

use quote::ToTokens;
use syn::{GenericArgument, Ident, PathArguments, Type};

/// Tokens of a type as text, the identity used for "same type" checks.
pub(crate) fn type_key(ty: &Type) -> String {
    ty.to_token_stream().to_string()
}

/// A type as the user wrote it, for messages: its tokens without spaces.
pub(crate) fn type_text(ty: &Type) -> String {
    type_key(ty).replace(' ', "")
}

/// The last path segment of a type, used as the enum variant name.
pub(crate) fn last_ident(ty: &Type) -> Option<&Ident> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| &s.ident),
        Type::Group(g) => last_ident(&g.elem),
        Type::Paren(p) => last_ident(&p.elem),
        _ => None,
    }
}

/// The `X` of `Result<X, E>` or of an alias like `AccountResult<X>`.
pub(crate) fn result_ok(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    // `Result`, or an alias such as `io::Result<T>` / `AccountResult<T>`.
    if !last.ident.to_string().ends_with("Result") {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let output = types.next()?;
    types.nth(1).is_none().then_some(output)
}
