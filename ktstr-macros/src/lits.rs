//! Literal extraction with precise errors, shared by both macros.

use syn::{spanned::Spanned, Error, Expr, ExprLit, Lit, LitStr, Result};

fn lit(e: &Expr) -> Option<&Lit> {
    match e {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(g) => lit(&g.expr),
        _ => None,
    }
}

/// An integer literal of type `T`.
pub fn int<T>(key: &str, e: &Expr) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match lit(e) {
        Some(Lit::Int(i)) => i.base10_parse(),
        Some(Lit::Float(f)) => Err(Error::new(
            f.span(),
            format!("`{key}` takes an integer literal, not a float"),
        )),
        _ => Err(Error::new(
            e.span(),
            format!("`{key}` takes an integer literal"),
        )),
    }
}

/// A positive integer literal (zero rejected).
pub fn positive<T>(key: &str, e: &Expr) -> Result<T>
where
    T: std::str::FromStr + PartialEq + Default,
    T::Err: std::fmt::Display,
{
    let v = int::<T>(key, e)?;
    if v == T::default() {
        return Err(Error::new(e.span(), format!("`{key}` must be at least 1")));
    }
    Ok(v)
}

/// A float literal (`3.0`, not `3`).
pub fn float(key: &str, e: &Expr) -> Result<f64> {
    match lit(e) {
        Some(Lit::Float(f)) => f.base10_parse(),
        Some(Lit::Int(i)) => Err(Error::new(
            i.span(),
            format!(
                "`{key}` takes a float literal: write `{}.0`",
                i.base10_digits()
            ),
        )),
        _ => Err(Error::new(
            e.span(),
            format!("`{key}` takes a float literal"),
        )),
    }
}

/// A bool literal.
pub fn boolean(key: &str, e: &Expr) -> Result<bool> {
    match lit(e) {
        Some(Lit::Bool(b)) => Ok(b.value),
        _ => Err(Error::new(
            e.span(),
            format!("`{key}` takes `true` or `false`"),
        )),
    }
}

/// A string literal.
pub fn string(key: &str, e: &Expr) -> Result<LitStr> {
    match lit(e) {
        Some(Lit::Str(s)) => Ok(s.clone()),
        _ => Err(Error::new(
            e.span(),
            format!("`{key}` takes a string literal"),
        )),
    }
}

/// The elements of an array expression.
pub fn array<'a>(key: &str, e: &'a Expr) -> Result<Vec<&'a Expr>> {
    match e {
        Expr::Array(a) => Ok(a.elems.iter().collect()),
        Expr::Group(g) => array(key, &g.expr),
        _ => Err(Error::new(
            e.span(),
            format!("`{key}` takes an array: `{key} = [..]`"),
        )),
    }
}

/// An array of string literals.
pub fn strings(key: &str, e: &Expr) -> Result<Vec<LitStr>> {
    array(key, e)?.into_iter().map(|x| string(key, x)).collect()
}

/// `SCREAMING_SNAKE` const name for a kebab-case flag name.
pub fn const_name(flag: &str) -> String {
    flag.replace('-', "_").to_uppercase()
}

/// The candidate closest to `k` by edit distance, when it is close enough to be a likely typo
/// (within a third of `k`'s length, at least 2).
pub fn closest<'a>(k: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (k.len() / 3).max(2);
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(k, c), *c))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map(|(_, c)| c)
}
