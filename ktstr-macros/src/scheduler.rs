//! `declare_scheduler!(NAME { ... })`: validates the flag graph, emits the `Scheduler` const,
//! its typed flag module and the registry entry.

use std::collections::{BTreeSet, HashMap};

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{braced, bracketed, Error, Expr, Ident, LitStr, Result, Token, Visibility};

use crate::lits;

/// Flags are a `u32` mask in the harness; at most 31 keep the bit arithmetic simple.
const MAX_FLAGS: usize = 31;

const GATE_INTS: &[&str] = &[
    "min_llcs",
    "max_llcs",
    "min_cpus",
    "max_cpus",
    "min_numa_nodes",
    "max_numa_nodes",
];

/// A flag name written as an identifier (`no_wake` → `no-wake`) or a string.
struct FlagIdent {
    name: String,
    span: Span,
}

impl Parse for FlagIdent {
    fn parse(input: ParseStream) -> Result<Self> {
        if input.peek(LitStr) {
            let s: LitStr = input.parse()?;
            let name = s.value();
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(Error::new(
                    s.span(),
                    "flag names are kebab-case: lowercase letters, digits and `-`",
                ));
            }
            Ok(FlagIdent {
                name,
                span: s.span(),
            })
        } else {
            let id: Ident = input.parse()?;
            let raw = id.to_string();
            let raw = raw.trim_start_matches("r#");
            if raw.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(Error::new(id.span(), "flag names are lowercase"));
            }
            Ok(FlagIdent {
                name: raw.replace('_', "-"),
                span: id.span(),
            })
        }
    }
}

struct Flag {
    name: FlagIdent,
    args: Vec<LitStr>,
    requires: Vec<FlagIdent>,
    excludes: Vec<FlagIdent>,
}

/// Every field `declare_scheduler!` accepts (each has an arm in the parser below, and a line
/// in doc/src/schedulers.md's example).
const FIELDS: &[&str] = &[
    "name",
    "binary",
    "topology",
    "flags",
    "sched_args",
    "kargs",
    "kernels",
    "sysctls",
    "cgroup_parent",
    "config_file",
    "watchdog_arg",
    "ops_name",
    "assert",
    "constraints",
];

fn bracket_list<T: Parse>(input: ParseStream) -> Result<Vec<T>> {
    let content;
    bracketed!(content in input);
    Ok(Punctuated::<T, Token![,]>::parse_terminated(&content)?
        .into_iter()
        .collect())
}

impl Parse for Flag {
    fn parse(input: ParseStream) -> Result<Self> {
        let name: FlagIdent = input.parse()?;
        input.parse::<Token![:]>()?;
        let args = bracket_list::<LitStr>(input)?;
        let mut requires = Vec::new();
        let mut excludes = Vec::new();
        while input.peek(Ident) {
            let kw: Ident = input.parse()?;
            match kw.to_string().as_str() {
                "requires" => requires.extend(bracket_list::<FlagIdent>(input)?),
                "excludes" => excludes.extend(bracket_list::<FlagIdent>(input)?),
                other => {
                    return Err(Error::new(
                        kw.span(),
                        format!("expected `requires [..]` or `excludes [..]`, found `{other}`"),
                    ))
                }
            }
        }
        Ok(Flag {
            name,
            args,
            requires,
            excludes,
        })
    }
}

struct SysctlLit(LitStr, LitStr);

impl Parse for SysctlLit {
    fn parse(input: ParseStream) -> Result<Self> {
        let k: LitStr = input.parse()?;
        input.parse::<Token![=]>()?;
        Ok(SysctlLit(k, input.parse()?))
    }
}

struct Decl {
    vis: Visibility,
    ident: Ident,
    fields: Vec<(Ident, TokenStream, Span)>,
    name: Option<LitStr>,
    flags: Vec<Flag>,
    binary: Option<TokenStream>,
}

impl Parse for Decl {
    fn parse(input: ParseStream) -> Result<Self> {
        let vis: Visibility = input.parse()?;
        let ident: Ident = input.parse()?;
        let body;
        braced!(body in input);
        let _ = input.parse::<Option<Token![,]>>()?;
        let mut decl = Decl {
            vis,
            ident,
            fields: Vec::new(),
            name: None,
            flags: Vec::new(),
            binary: None,
        };
        let mut seen: HashMap<String, ()> = HashMap::new();
        while !body.is_empty() {
            let key: Ident = body.parse()?;
            let k = key.to_string();
            if seen.insert(k.clone(), ()).is_some() {
                return Err(Error::new(
                    key.span(),
                    format!("field `{k}` is given twice"),
                ));
            }
            body.parse::<Token![:]>()?;
            match k.as_str() {
                "name" => decl.name = Some(body.parse()?),
                "binary" => {
                    let e: Expr = body.parse()?;
                    decl.binary = Some(match &e {
                        Expr::Lit(_) => {
                            let s = lits::string("binary", &e)?;
                            quote!(::ktstr::registry::SchedulerBinary::Discover(#s))
                        }
                        _ => quote!(#e),
                    });
                }
                "topology" => {
                    let e: Expr = body.parse()?;
                    let Expr::Tuple(t) = &e else {
                        return Err(Error::new(
                            e.span(),
                            "`topology` takes `(numa_nodes, llcs, cores, threads)`",
                        ));
                    };
                    if t.elems.len() != 4 {
                        return Err(Error::new(
                            e.span(),
                            "`topology` takes four counts: `(numa_nodes, llcs, cores, threads)`",
                        ));
                    }
                    let names = ["numa_nodes", "llcs", "cores", "threads"];
                    let mut v = [0u32; 4];
                    for (i, x) in t.elems.iter().enumerate() {
                        v[i] = lits::positive(names[i], x)?;
                    }
                    if v[1] % v[0] != 0 {
                        return Err(Error::new(
                            t.elems[1].span(),
                            format!(
                                "llcs ({}) must be a multiple of numa_nodes ({})",
                                v[1], v[0]
                            ),
                        ));
                    }
                    let [n, l, c, th] = v;
                    decl.fields
                        .push((key.clone(), quote!(.topology(#n, #l, #c, #th)), key.span()));
                }
                "flags" => {
                    let content;
                    braced!(content in body);
                    decl.flags = Punctuated::<Flag, Token![,]>::parse_terminated(&content)?
                        .into_iter()
                        .collect();
                }
                "sched_args" | "kargs" | "kernels" => {
                    let v = bracket_list::<LitStr>(&body)?;
                    let f = format_ident!("{}", k);
                    decl.fields
                        .push((key.clone(), quote!(.#f(&[#(#v),*])), key.span()));
                }
                "sysctls" => {
                    let v = bracket_list::<SysctlLit>(&body)?;
                    let items = v.iter().map(|SysctlLit(k, val)| {
                        quote!(::ktstr::registry::Sysctl { key: #k, value: #val })
                    });
                    decl.fields
                        .push((key.clone(), quote!(.sysctls(&[#(#items),*])), key.span()));
                }
                "cgroup_parent" | "config_file" | "watchdog_arg" | "ops_name" => {
                    let s: LitStr = body.parse()?;
                    let f = format_ident!("{}", k);
                    decl.fields.push((key.clone(), quote!(.#f(#s)), key.span()));
                }
                "assert" => {
                    let e: Expr = body.parse()?;
                    decl.fields
                        .push((key.clone(), quote!(.assert(#e)), key.span()));
                }
                "constraints" => {
                    let g = parse_constraints(&body)?;
                    decl.fields
                        .push((key.clone(), quote!(.constraints(#g)), key.span()));
                }
                other => {
                    let hint = lits::closest(other, FIELDS)
                        .map(|f| format!("; did you mean `{f}`?"))
                        .unwrap_or_default();
                    return Err(Error::new(
                        key.span(),
                        format!("unknown declare_scheduler! field `{other}`{hint}"),
                    ));
                }
            }
            if body.is_empty() {
                break;
            }
            body.parse::<Token![,]>()?;
        }
        Ok(decl)
    }
}

fn parse_constraints(input: ParseStream) -> Result<TokenStream> {
    let content;
    braced!(content in input);
    let mut out = quote!(::ktstr::registry::Gates::NONE);
    let mut vals: HashMap<String, (u32, Span)> = HashMap::new();
    while !content.is_empty() {
        let key: Ident = content.parse()?;
        content.parse::<Token![:]>()?;
        let e: Expr = content.parse()?;
        let k = key.to_string();
        let f = format_ident!("{}", k);
        if GATE_INTS.contains(&k.as_str()) {
            let v: u32 = if k.starts_with("max_") {
                lits::positive(&k, &e)?
            } else {
                lits::int(&k, &e)?
            };
            vals.insert(k, (v, e.span()));
            out.extend(quote!(.#f(#v)));
        } else if k == "requires_smt" {
            let v = lits::boolean(&k, &e)?;
            out.extend(quote!(.requires_smt(#v)));
        } else {
            return Err(Error::new(key.span(), format!("unknown constraint `{k}`")));
        }
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    for what in ["llcs", "cpus", "numa_nodes"] {
        if let (Some((a, _)), Some((b, span))) = (
            vals.get(&format!("min_{what}")),
            vals.get(&format!("max_{what}")),
        ) {
            if a > b {
                return Err(Error::new(
                    *span,
                    format!("min_{what} ({a}) is greater than max_{what} ({b})"),
                ));
            }
        }
    }
    Ok(out)
}

/// Checks duplicates, unknown or self references, the flag limit and never-active flags.
fn validate_flags(flags: &[Flag]) -> Result<()> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, f) in flags.iter().enumerate() {
        if i == MAX_FLAGS {
            return Err(Error::new(
                f.name.span,
                format!("a scheduler may declare at most {MAX_FLAGS} flags"),
            ));
        }
        if index.insert(&f.name.name, i).is_some() {
            return Err(Error::new(
                f.name.span,
                format!("flag `{}` is declared twice", f.name.name),
            ));
        }
    }
    let mut requires = vec![BTreeSet::new(); flags.len()];
    let mut excludes = vec![BTreeSet::new(); flags.len()];
    for (i, f) in flags.iter().enumerate() {
        for (list, what, out) in [
            (&f.requires, "requires", &mut requires[i]),
            (&f.excludes, "excludes", &mut excludes[i]),
        ] {
            for r in list {
                let Some(&j) = index.get(r.name.as_str()) else {
                    return Err(Error::new(
                        r.span,
                        format!("`{}` {what} unknown flag `{}`", f.name.name, r.name),
                    ));
                };
                if j == i {
                    return Err(Error::new(
                        r.span,
                        format!("flag `{}` {what} itself", f.name.name),
                    ));
                }
                out.insert(j);
            }
        }
    }
    for (i, f) in flags.iter().enumerate() {
        // Transitive requires closure, including the flag itself.
        let mut closure = BTreeSet::from([i]);
        let mut stack = vec![i];
        while let Some(x) = stack.pop() {
            for &r in &requires[x] {
                if closure.insert(r) {
                    stack.push(r);
                }
            }
        }
        for &a in &closure {
            if let Some(&b) = excludes[a].iter().find(|b| closure.contains(b)) {
                return Err(Error::new(
                    f.name.span,
                    format!(
                        "flag `{}` can never be active: it needs `{}` and `{}`, but `{}` excludes `{}`",
                        f.name.name, flags[a].name.name, flags[b].name.name,
                        flags[a].name.name, flags[b].name.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Expands the macro.
pub fn expand(input: TokenStream) -> Result<TokenStream> {
    let decl: Decl = syn::parse2(input)?;
    let Some(name) = &decl.name else {
        return Err(Error::new(
            decl.ident.span(),
            "declare_scheduler! needs `name: \"...\"`",
        ));
    };
    if name.value().is_empty() || name.value().contains(['/', '+', '~', ' ']) {
        return Err(Error::new(
            name.span(),
            "scheduler names appear in case names: no empty name, `/`, `+`, `~` or spaces",
        ));
    }
    validate_flags(&decl.flags)?;

    let vis = &decl.vis;
    let vis = if matches!(vis, Visibility::Inherited) {
        quote!(pub)
    } else {
        quote!(#vis)
    };
    let ident = &decl.ident;
    let mut chain = Vec::new();
    if let Some(b) = &decl.binary {
        chain.push(quote!(.binary(#b)));
    }
    for (_, ts, _) in &decl.fields {
        chain.push(ts.clone());
    }
    if !decl.flags.is_empty() {
        let items = decl.flags.iter().map(|f| {
            let n = &f.name.name;
            let args = &f.args;
            let req = f.requires.iter().map(|r| &r.name);
            let exc = f.excludes.iter().map(|r| &r.name);
            quote!(::ktstr::registry::FlagDecl::new(#n, &[#(#args),*])
                .requires(&[#(#req),*]).excludes(&[#(#exc),*]))
        });
        chain.push(quote!(.flags(&[#(#items),*])));
    }
    let consts = decl.flags.iter().map(|f| {
        let c = Ident::new(&lits::const_name(&f.name.name), f.name.span);
        let n = &f.name.name;
        let doc = format!("Typed reference to flag `{n}`.");
        quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            pub const #c: ::ktstr::registry::FlagRef = ::ktstr::registry::FlagRef::new(#name, #n);
        }
    });
    let static_name = format_ident!("__KTSTR_SCHED_{}", ident);
    let doc = format!(
        "The `{}` scheduler (declared with `declare_scheduler!`).",
        name.value()
    );
    let mod_doc = format!("Typed flags of the `{}` scheduler.", name.value());
    Ok(quote! {
        #[doc = #doc]
        #[allow(dead_code)]
        #vis const #ident: ::ktstr::registry::Scheduler =
            ::ktstr::registry::Scheduler::new(#name) #(#chain)*;

        #[doc = #mod_doc]
        #[allow(non_snake_case, dead_code)]
        #vis mod #ident {
            #(#consts)*
        }

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[::ktstr::__private::linkme::distributed_slice(::ktstr::__private::KTSTR_SCHEDULERS)]
        #[linkme(crate = ::ktstr::__private::linkme)]
        static #static_name: ::ktstr::registry::Scheduler = #ident;
    })
}

/// `doc/src/schedulers.md`'s annotated `declare_scheduler!` example names exactly the fields
/// the macro accepts, and the macro knows every one of them.
#[cfg(test)]
mod reference_doc {
    use super::*;

    const PAGE: &str = include_str!("../../doc/src/schedulers.md");

    /// The `key:` at the start of each line of the page's example (commented-out lines too).
    fn example_fields() -> Vec<String> {
        let block = PAGE
            .split("declare_scheduler!(SCX_DEMO {")
            .nth(1)
            .and_then(|b| b.split("});").next())
            .expect("doc/src/schedulers.md has the annotated example");
        let mut v: Vec<String> = block
            .lines()
            .map(|l| l.trim().trim_start_matches("// ").trim())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn the_example_names_every_field() {
        let mut want: Vec<String> = FIELDS.iter().map(|s| s.to_string()).collect();
        want.sort();
        // Flag names inside `flags: { ... }` are the example's own, not fields.
        let got: Vec<String> = example_fields()
            .into_iter()
            .filter(|k| !["llc", "steal", "spread"].contains(&k.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_macro_knows_every_field() {
        for f in FIELDS {
            let k = format_ident!("{}", f);
            let e = expand(quote!(X { name: "x", #k: 1 }))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!e.contains("unknown declare_scheduler! field"), "{f}: {e}");
        }
        let e = expand(quote!(X {
            name: "x",
            sched_arg: 1
        }))
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("did you mean `sched_args`?"), "{e}");
    }
}
