//! `#[ktstr_test(...)]`: validates keys and the function signature, emits a registry entry.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Error, Expr, FnArg, Ident, ItemFn, Path, Result, ReturnType, Token, Type};

use crate::lits;

/// Topology, memory, duration and worker counts: `u32`, zero rejected.
const POSITIVE_U32: &[&str] = &[
    "numa_nodes",
    "llcs",
    "cores",
    "threads",
    "memory_mib",
    "duration_s",
    "workers_per_cgroup",
    "watchdog_timeout_s",
];
/// Gates (`u32`); `max_*` reject zero.
const GATES_U32: &[&str] = &[
    "min_llcs",
    "max_llcs",
    "min_cpus",
    "max_cpus",
    "min_numa_nodes",
    "max_numa_nodes",
];
/// Integer `Assert` thresholds.
const ASSERT_INT: &[&str] = &[
    "max_gap_ms",
    "max_local_dsq_depth",
    "sustained_samples",
    "max_p99_wake_latency_ns",
];
/// Float `Assert` thresholds.
const ASSERT_FLOAT: &[&str] = &[
    "max_spread_pct",
    "max_cgroup_spread_pct",
    "max_throughput_cv",
    "min_work_rate",
    "max_imbalance_ratio",
    "max_fallback_rate",
    "max_keep_last_rate",
    "max_wake_latency_cv",
    "min_iteration_rate",
    "max_migration_ratio",
    "min_page_locality",
    "max_cross_node_migration_ratio",
    "max_slow_tier_ratio",
];
/// Bool `Assert` switches.
const ASSERT_BOOL: &[&str] = &["not_starved", "isolation", "fail_on_stall"];
/// Plain bool test keys.
const TEST_BOOL: &[&str] = &[
    "performance_mode",
    "expect_err",
    "ignore",
    "host_only",
    "auto_repro",
];
/// Keys with a value form of their own (handled one by one in [`expand`]).
const SPECIAL: &[&str] = &[
    "requires_smt",
    "cleanup_budget_ms",
    "scheduler",
    "extra_sched_args",
    "required_flags",
    "excluded_flags",
    "work_types",
    "payload",
    "workloads",
    "extra_include_files",
    "bpf_map_write",
];
/// Spec keys whose supporting types do not exist yet.
const NOT_YET: &[&str] = &[];

/// Every key the macro accepts.
fn supported_keys() -> Vec<&'static str> {
    [
        POSITIVE_U32,
        GATES_U32,
        ASSERT_INT,
        ASSERT_FLOAT,
        ASSERT_BOOL,
        TEST_BOOL,
        SPECIAL,
    ]
    .concat()
}

/// "unknown ktstr_test key", with the closest known key when one is a likely typo.
fn unknown_key(k: &str) -> String {
    match lits::closest(k, &supported_keys()) {
        Some(c) => format!("unknown ktstr_test key `{k}`; did you mean `{c}`?"),
        None => format!("unknown ktstr_test key `{k}` (the keys: doc/src/test-keys.md)"),
    }
}

fn parse_pairs(input: ParseStream) -> Result<Vec<(Ident, Expr)>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let key: Ident = input
            .parse()
            .map_err(|e| Error::new(e.span(), "expected `key = value` (e.g. `llcs = 2`)"))?;
        if !input.peek(Token![=]) {
            return Err(Error::new(
                key.span(),
                format!(
                    "expected `{key} = value`: every ktstr_test argument is a `key = value` pair"
                ),
            ));
        }
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        out.push((key, value));
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(out)
}

/// A flag named in `required_flags`/`excluded_flags`.
enum FlagName {
    Str(syn::LitStr),
    Typed(Path),
}

impl FlagName {
    /// Comparable kebab-case name (`SCX_DEMO::NO_WAKE` → `no-wake`).
    fn key(&self) -> String {
        match self {
            FlagName::Str(s) => s.value(),
            FlagName::Typed(p) => p
                .segments
                .last()
                .map(|s| s.ident.to_string().to_lowercase().replace('_', "-"))
                .unwrap_or_default(),
        }
    }
    fn span(&self) -> Span {
        match self {
            FlagName::Str(s) => s.span(),
            FlagName::Typed(p) => p.span(),
        }
    }
    /// The `&'static str` expression for the registry entry.
    fn name_expr(&self) -> TokenStream {
        match self {
            FlagName::Str(s) => quote!(#s),
            FlagName::Typed(p) => quote!(#p.name),
        }
    }
}

fn flag_list(key: &str, e: &Expr) -> Result<Vec<FlagName>> {
    lits::array(key, e)?
        .into_iter()
        .map(|x| match x {
            Expr::Path(p) => Ok(FlagName::Typed(p.path.clone())),
            other => lits::string(key, other)
                .map(FlagName::Str)
                .map_err(|_| Error::new(other.span(), format!("`{key}` entries are flag name strings or typed flag consts such as `SCHED::FLAG`"))),
        })
        .collect()
}

fn check_signature(f: &ItemFn) -> Result<()> {
    let sig = &f.sig;
    let hint = "ktstr tests have the signature `fn NAME(ctx: &Ctx) -> Result<AssertResult>`";
    if let Some(a) = &sig.asyncness {
        return Err(Error::new(
            a.span(),
            format!("ktstr tests cannot be async; {hint}"),
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(Error::new(
            c.span(),
            format!("ktstr tests cannot be const; {hint}"),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(
            sig.generics.span(),
            format!("ktstr tests cannot be generic; {hint}"),
        ));
    }
    if sig.inputs.len() != 1 {
        let span = if sig.inputs.is_empty() {
            sig.paren_token.span.join()
        } else {
            sig.inputs[1].span()
        };
        return Err(Error::new(
            span,
            format!("expected exactly one parameter `ctx: &Ctx`; {hint}"),
        ));
    }
    match &sig.inputs[0] {
        FnArg::Receiver(r) => {
            return Err(Error::new(
                r.span(),
                format!("ktstr tests are free functions; {hint}"),
            ))
        }
        FnArg::Typed(pt) => match &*pt.ty {
            Type::Reference(r) if r.mutability.is_none() => {}
            other => {
                return Err(Error::new(
                    other.span(),
                    format!("the parameter must be a shared reference `&Ctx`; {hint}"),
                ))
            }
        },
    }
    if let ReturnType::Default = sig.output {
        return Err(Error::new(
            sig.ident.span(),
            format!("missing return type `-> Result<AssertResult>`; {hint}"),
        ));
    }
    Ok(())
}

/// Expands the attribute.
pub fn expand(attr: TokenStream, item: TokenStream) -> Result<TokenStream> {
    let func: ItemFn = syn::parse2(item)?;
    check_signature(&func)?;
    let pairs = parse_pairs.parse2(attr)?;

    let mut seen: HashMap<String, Span> = HashMap::new();
    let mut setters: Vec<TokenStream> = Vec::new();
    let mut asserts: Vec<TokenStream> = Vec::new();
    let mut gates: Vec<TokenStream> = Vec::new();
    let mut ints: HashMap<&'static str, (u32, Span)> = HashMap::new();
    let mut scheduler: Option<Path> = None;
    let mut required: Vec<FlagName> = Vec::new();
    let mut excluded: Vec<FlagName> = Vec::new();
    let mut work_types: Vec<syn::LitStr> = Vec::new();
    let mut payload: Option<Path> = None;
    let mut workloads: Vec<Path> = Vec::new();

    for (key, value) in &pairs {
        let k = key.to_string();
        if seen.insert(k.clone(), key.span()).is_some() {
            return Err(Error::new(key.span(), format!("`{k}` is given twice")));
        }
        let kid = format_ident!("{}", k);
        if let Some(&name) = POSITIVE_U32.iter().find(|n| **n == k) {
            let v: u32 = lits::positive(name, value)?;
            ints.insert(name, (v, value.span()));
            setters.push(quote!(.#kid(#v)));
        } else if let Some(&name) = GATES_U32.iter().find(|n| **n == k) {
            let v: u32 = if name.starts_with("max_") {
                lits::positive(name, value)?
            } else {
                lits::int(name, value)?
            };
            ints.insert(name, (v, value.span()));
            gates.push(quote!(.#kid(#v)));
        } else if k == "requires_smt" {
            let v = lits::boolean(&k, value)?;
            gates.push(quote!(.requires_smt(#v)));
        } else if ASSERT_INT.contains(&k.as_str()) {
            let v: u64 = if k.starts_with("max_") {
                lits::positive(&k, value)?
            } else {
                lits::int(&k, value)?
            };
            asserts.push(quote!(.#kid(#v)));
        } else if ASSERT_FLOAT.contains(&k.as_str()) {
            let v = lits::float(&k, value)?;
            if k.starts_with("max_") && v == 0.0 {
                return Err(Error::new(
                    value.span(),
                    format!("`{k}` must be greater than 0"),
                ));
            }
            asserts.push(quote!(.#kid(#v)));
        } else if ASSERT_BOOL.contains(&k.as_str()) {
            let v = lits::boolean(&k, value)?;
            asserts.push(quote!(.#kid(#v)));
        } else if k == "expect_err"
            && matches!(value, Expr::Lit(l) if matches!(l.lit, syn::Lit::Str(_)))
        {
            // `expect_err = "Kind: text"`: fail expected, and with this diagnosis.
            let v = lits::string(&k, value)?;
            if v.value().trim().is_empty() {
                return Err(Error::new(
                    v.span(),
                    "`expect_err` takes `true`/`false` or a non-empty `\"Kind: message substring\"`",
                ));
            }
            setters.push(quote!(.expect_err(true).expect_err_match(#v)));
        } else if TEST_BOOL.contains(&k.as_str()) {
            let v = lits::boolean(&k, value)?;
            setters.push(quote!(.#kid(#v)));
        } else if k == "cleanup_budget_ms" {
            let v: u64 = lits::positive(&k, value)?;
            setters.push(quote!(.cleanup_budget_ms(#v)));
        } else if k == "scheduler" {
            match value {
                Expr::Path(p) => scheduler = Some(p.path.clone()),
                other => {
                    return Err(Error::new(
                        other.span(),
                        "`scheduler` takes a path to a `declare_scheduler!` const, e.g. `scheduler = SCX_DEMO`",
                    ))
                }
            }
        } else if k == "extra_sched_args" {
            let v = lits::strings(&k, value)?;
            setters.push(quote!(.extra_sched_args(&[#(#v),*])));
        } else if k == "work_types" {
            let v = lits::strings(&k, value)?;
            if v.is_empty() {
                return Err(Error::new(
                    value.span(),
                    "`work_types` takes one or more work type names, e.g. `[\"SpinWait\", \"YieldHeavy\"]`",
                ));
            }
            for (i, a) in v.iter().enumerate() {
                if v[..i].iter().any(|b| b.value() == a.value()) {
                    return Err(Error::new(
                        a.span(),
                        format!("work type {:?} is listed twice", a.value()),
                    ));
                }
            }
            work_types = v;
        } else if k == "payload" {
            payload = Some(payload_path(&k, value)?);
        } else if k == "workloads" {
            workloads = lits::array(&k, value)?
                .into_iter()
                .map(|e| payload_path(&k, e))
                .collect::<Result<_>>()?;
        } else if k == "bpf_map_write" {
            let p = match value {
                Expr::Path(p) => p.path.clone(),
                other => {
                    return Err(Error::new(
                        other.span(),
                        "`bpf_map_write` takes a path to a `BpfMapWrite` const, e.g. \
                         `bpf_map_write = STALL_NOW` with `const STALL_NOW: BpfMapWrite = \
                         BpfMapWrite::new(\".bss\", 0, 1);`",
                    ))
                }
            };
            // Spanned on the user's path: a non-BpfMapWrite const is a type error there.
            setters.push(quote_spanned!(p.span()=> .bpf_map_write(&#p)));
        } else if k == "extra_include_files" {
            let v = lits::strings(&k, value)?;
            setters.push(quote!(.extra_include_files(&[#(#v),*])));
        } else if k == "required_flags" {
            required = flag_list(&k, value)?;
        } else if k == "excluded_flags" {
            excluded = flag_list(&k, value)?;
        } else if NOT_YET.contains(&k.as_str()) {
            return Err(Error::new(
                key.span(),
                format!("`{k}` is not supported yet"),
            ));
        } else {
            return Err(Error::new(key.span(), unknown_key(&k)));
        }
    }

    // Cross-key checks, reported on the later token.
    if let (Some((l, span)), Some((n, _))) = (ints.get("llcs"), ints.get("numa_nodes")) {
        if l % n != 0 {
            return Err(Error::new(
                *span,
                format!("llcs ({l}) must be a multiple of numa_nodes ({n}): LLCs are split evenly across nodes"),
            ));
        }
    }
    for what in ["llcs", "cpus", "numa_nodes"] {
        let (lo, hi) = (format!("min_{what}"), format!("max_{what}"));
        if let (Some((a, _)), Some((b, span))) = (ints.get(lo.as_str()), ints.get(hi.as_str())) {
            if a > b {
                return Err(Error::new(
                    *span,
                    format!("{lo} ({a}) is greater than {hi} ({b})"),
                ));
            }
        }
    }
    for ex in &excluded {
        if required.iter().any(|r| r.key() == ex.key()) {
            return Err(Error::new(
                ex.span(),
                format!("flag `{}` is both required and excluded", ex.key()),
            ));
        }
    }

    let sched = match &scheduler {
        Some(p) => quote!(#p),
        None => quote!(::ktstr::registry::Scheduler::EEVDF),
    };
    if let Some(p) = &scheduler {
        // Point type errors (not a Scheduler) at the user's path.
        setters.push(quote_spanned!(p.span()=> .scheduler(&#p)));
    }
    // A payload named twice (in `workloads`, or as `payload` too) would be packed and listed
    // twice: refused on the repeat.
    let shown = |p: &Path| quote!(#p).to_string();
    for (i, w) in workloads.iter().enumerate() {
        let repeat = payload
            .iter()
            .chain(&workloads[..i])
            .any(|o| shown(o) == shown(w));
        if repeat {
            return Err(Error::new(
                w.span(),
                format!("payload `{}` is listed twice (in `payload` and `workloads`, or twice in `workloads`)", shown(w).replace(' ', "")),
            ));
        }
    }
    if let Some(p) = &payload {
        setters.push(quote_spanned!(p.span()=> .payload(&#p)));
    }
    if !workloads.is_empty() {
        let refs = workloads.iter().map(|w| quote_spanned!(w.span()=> &#w));
        setters.push(quote!(.workloads(&[#(#refs),*])));
    }
    let mut checks = Vec::new();
    for w in &work_types {
        checks.push(quote_spanned!(w.span()=> ::ktstr::registry::__check_work_type(#w);));
    }
    if !work_types.is_empty() {
        setters.push(quote!(.work_types(&[#(#work_types),*])));
    }
    for f in required.iter().chain(&excluded) {
        let c = match f {
            FlagName::Str(s) => {
                quote_spanned!(s.span()=> ::ktstr::registry::__check_flag(&#sched, #s);)
            }
            FlagName::Typed(p) => {
                quote_spanned!(p.span()=> ::ktstr::registry::__check_flag_ref(&#sched, #p);)
            }
        };
        checks.push(c);
    }
    if !required.is_empty() {
        let names = required.iter().map(FlagName::name_expr);
        setters.push(quote!(.required_flags(&[#(#names),*])));
    }
    if !excluded.is_empty() {
        let names = excluded.iter().map(FlagName::name_expr);
        setters.push(quote!(.excluded_flags(&[#(#names),*])));
    }
    if !asserts.is_empty() {
        setters.push(quote!(.assert(::ktstr::assert::Assert::NO_OVERRIDES #(#asserts)*)));
    }
    if !gates.is_empty() {
        setters.push(quote!(.gates(::ktstr::registry::Gates::NONE #(#gates)*)));
    }

    let name = &func.sig.ident;
    let name_str = name.to_string();
    let static_name = format_ident!("__KTSTR_TEST_{}", name_str.to_uppercase());
    let fn_ref = quote_spanned!(func.sig.span()=> #name);
    let check_block = if checks.is_empty() {
        quote!()
    } else {
        quote!(const _: () = { #(#checks)* };)
    };
    Ok(quote! {
        #func

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[::ktstr::__private::linkme::distributed_slice(::ktstr::__private::KTSTR_TESTS)]
        #[linkme(crate = ::ktstr::__private::linkme)]
        static #static_name: ::ktstr::registry::KtstrTest =
            ::ktstr::registry::KtstrTest::new(#name_str, #fn_ref)
                .module(::core::module_path!())
                #(#setters)*;

        #check_block
    })
}

/// A `payload`/`workloads` entry: a path to a `Payload` const.
fn payload_path(key: &str, e: &Expr) -> Result<Path> {
    match e {
        Expr::Path(p) => Ok(p.path.clone()),
        other => Err(Error::new(
            other.span(),
            format!("`{key}` takes paths to `Payload` consts, e.g. `{key} = FIO`"),
        )),
    }
}

/// `doc/src/test-keys.md` lists exactly the keys this macro accepts.
#[cfg(test)]
mod reference_doc {
    use super::*;

    const PAGE: &str = include_str!("../../doc/src/test-keys.md");

    /// The key of every table row that starts with a backticked name.
    fn page_keys() -> Vec<&'static str> {
        PAGE.lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`'))
            .map(|(k, _)| k)
            .collect()
    }

    fn all_keys() -> Vec<&'static str> {
        [supported_keys(), NOT_YET.to_vec()].concat()
    }

    /// Expands `#[ktstr_test(KEY = 1)]` and returns the error text, if any.
    fn expand_err(key: &str) -> Option<String> {
        let k = format_ident!("{}", key);
        let item = quote!(
            fn t(ctx: &Ctx) -> Result<AssertResult> {
                todo!()
            }
        );
        expand(quote!(#k = 1), item).err().map(|e| e.to_string())
    }

    #[test]
    fn every_key_has_a_row_and_every_row_is_a_key() {
        let page = page_keys();
        let all = all_keys();
        for k in &all {
            assert!(
                page.contains(k),
                "doc/src/test-keys.md has no row for `{k}`"
            );
        }
        for k in &page {
            assert!(
                all.contains(k),
                "doc/src/test-keys.md lists `{k}`, which is no key"
            );
        }
        let mut sorted = page.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), page.len(), "a key is listed twice");
    }

    #[test]
    fn an_unknown_key_suggests_the_closest() {
        assert!(expand_err("lcs").unwrap().ends_with("did you mean `llcs`?"));
        assert!(expand_err("max_gap_sm")
            .unwrap()
            .ends_with("did you mean `max_gap_ms`?"));
        assert!(expand_err("zzzzzzzzzz")
            .unwrap()
            .contains("doc/src/test-keys.md"));
    }

    #[test]
    fn the_macro_knows_every_listed_key() {
        assert!(expand_err("no_such_key").is_some_and(|e| e.contains("unknown ktstr_test key")));
        for k in all_keys() {
            let e = expand_err(k).unwrap_or_default();
            assert!(!e.contains("unknown ktstr_test key"), "{k}: {e}");
            assert_eq!(
                NOT_YET.contains(&k),
                e.contains("not supported yet"),
                "{k}: {e}"
            );
        }
    }
}
