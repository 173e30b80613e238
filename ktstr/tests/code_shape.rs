//! The shape rules of ARCHITECTURE.md ("Module rules"), checked on the sources of the
//! workspace's crates:
//! - no cycle between the top-level modules of a crate (a module that uses another's items
//!   through `crate::` may not be used back, directly or through others);
//! - no non-test function over 100 lines (the probe guest's assembler listing excepted).
//!
//! Both read the source text, not the compiler's view: `crate::NAME` paths (in `use` lines or
//! inline) are the edges, and a function is the lines from its `fn` to its closing brace.
//! Test code (`#[cfg(test)]` modules, `*tests.rs` files) is left out. Set
//! `KTSTR_CODE_SHAPE_REPORT=1` to print the module graph, the longest functions and the
//! count of non-test `unsafe` blocks, impls and functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose `src/` is checked.
const CRATES: &[&str] = &["ktstr", "ktstr-harness", "cargo-ktstr"];

/// Longest a non-test function may be.
const MAX_FN_LINES: usize = 100;

/// Functions allowed past [`MAX_FN_LINES`], each with its reason.
const LONG_FN_ALLOWED: &[(&str, &str)] = &[(
    "ktstr/src/vm/kvm/probe/code.rs",
    "the probe guest's assembler listing: one straight sequence of instructions",
)];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// A file's text without its test code: `*tests.rs` files and files declared by
/// `#[cfg(test)] mod name;` are empty; a `#[cfg(test)]` item inside a file (a `mod tests { .. }`,
/// a helper) is dropped up to its closing brace.
fn non_test_text(path: &Path, test_files: &BTreeSet<PathBuf>) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    if name.ends_with("tests.rs") || test_files.contains(path) {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "#[cfg(test)]" {
            // Skip further attributes, then the item: to its `;` or its closing brace.
            i += 1;
            while i < lines.len() && lines[i].trim_start().starts_with("#[") {
                i += 1;
            }
            let mut depth = 0i32;
            let mut opened = false;
            while i < lines.len() {
                let code = code_of(lines[i]);
                depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
                opened |= code.contains('{');
                i += 1;
                if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(lines[i]);
        out.push('\n');
        i += 1;
    }
    out
}

/// Files that `#[cfg(test)] mod name;` (with or without `#[path = "file"]`) declares.
fn test_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let stem = f.file_stem().unwrap().to_string_lossy();
        let dir = f.parent().unwrap();
        // A `mod x;` in `a/b.rs` is `a/b/x.rs`; in `a/mod.rs` or a crate root, `a/x.rs`.
        let mod_dir = if matches!(stem.as_ref(), "mod" | "lib" | "main") {
            dir.to_path_buf()
        } else {
            dir.join(stem.as_ref())
        };
        for (i, l) in lines.iter().enumerate() {
            if *l != "#[cfg(test)]" {
                continue;
            }
            let mut path_attr = None;
            for next in &lines[i + 1..] {
                if let Some(p) = next.strip_prefix("#[path = \"") {
                    path_attr = p.strip_suffix("\"]").map(str::to_string);
                    continue;
                }
                if next.starts_with("#[") {
                    continue;
                }
                let decl = next.strip_prefix("pub ").unwrap_or(next);
                if let Some(m) = decl.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
                    match &path_attr {
                        Some(p) => {
                            out.insert(dir.join(p));
                        }
                        None => {
                            out.insert(mod_dir.join(format!("{m}.rs")));
                            out.insert(mod_dir.join(m).join("mod.rs"));
                        }
                    }
                }
                break;
            }
        }
    }
    out
}

/// The code of a line with its `//` comment removed (strings that contain `//` are rare in
/// the lines that matter here: paths and braces).
fn code_of(line: &str) -> &str {
    let mut in_str = false;
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// The top-level module a file belongs to (`None` for the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first.to_string()),
    }
}

/// The top-level modules named by `crate::` paths in `text`, including grouped imports
/// (`use crate::{a::X, b}`).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text.lines().map(code_of).collect::<Vec<_>>().join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `ktstr_crate::`, `$crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Each comma-separated item at depth 0 of the group names a module first.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_first(&item, &mut out);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            push_first(&item, &mut out);
        } else {
            push_first(rest, &mut out);
        }
    }
    out
}

fn push_first(path: &str, out: &mut BTreeSet<String>) {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() && name != "self" {
        out.insert(name);
    }
}

/// Edges between the top-level modules of the crate at `src`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let tests = test_files(&files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    for f in &files {
        let Some(m) = top_module(src, f) else {
            continue;
        };
        let refs = crate_refs(&non_test_text(f, &tests));
        let e = g.entry(m.clone()).or_default();
        for r in refs {
            if r != m && modules.contains(&r) {
                e.insert(r);
            }
        }
    }
    g
}

/// The strongly connected sets of more than one module (Tarjan's algorithm).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[v].min(t.low[w]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.low[v].min(t.index[w]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut set = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                set.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort();
                t.out.push(set);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out.sort();
    t.out
}

/// Non-test functions and their length in lines: from the `fn` line to the line of the brace
/// that closes its body. Braces in strings and char literals are skipped.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let code = code_of(lines[i]);
        let Some(name) = fn_name(code) else {
            i += 1;
            continue;
        };
        // Find the body's opening brace (a declaration without body ends at `;`).
        let mut depth = 0i32;
        let mut opened = false;
        let mut j = i;
        'outer: while j < lines.len() {
            let mut in_str = false;
            let mut prev = ' ';
            for c in code_of(lines[j]).chars() {
                match c {
                    '"' if prev != '\\' && prev != '\'' => in_str = !in_str,
                    '{' if !in_str && prev != '\'' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' if !in_str && prev != '\'' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            break 'outer;
                        }
                    }
                    ';' if !in_str && !opened => break 'outer,
                    _ => {}
                }
                prev = if prev == '\\' && c == '\\' { ' ' } else { c };
            }
            j += 1;
        }
        if opened {
            out.push((name, i + 1, j - i + 1));
        }
        // Nested functions are counted inside their parent; go on after this line.
        i += 1;
    }
    out
}

fn fn_name(code: &str) -> Option<String> {
    let t = code.trim_start();
    let mut words = t.split_whitespace();
    let mut w = words.next()?;
    // Qualifiers before `fn`.
    while matches!(
        w,
        "pub" | "pub(crate)" | "pub(super)" | "async" | "const" | "unsafe"
    ) || w.starts_with("pub(")
        || w.starts_with("extern")
    {
        w = words.next()?;
    }
    if w != "fn" {
        return None;
    }
    let rest = words.next()?;
    Some(
        rest.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect(),
    )
}

/// Non-test `unsafe` blocks, impls and functions in `text`.
fn unsafe_count(text: &str) -> usize {
    text.lines()
        .map(code_of)
        .map(|l| {
            l.match_indices("unsafe")
                .filter(|(i, _)| {
                    let after = &l[i + "unsafe".len()..];
                    let before = l[..*i].chars().last();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"')
                        && (after.starts_with(" {")
                            || after.starts_with(" fn")
                            || after.starts_with(" impl")
                            || after.is_empty())
                })
                .count()
        })
        .sum()
}

fn report() -> bool {
    std::env::var_os("KTSTR_CODE_SHAPE_REPORT").is_some()
}

#[test]
fn no_module_cycles() {
    let mut found = Vec::new();
    for krate in CRATES {
        let g = module_graph(&workspace().join(krate).join("src"));
        if report() {
            println!("{krate}: module graph");
            for (m, to) in &g {
                println!(
                    "  {m} -> {}",
                    to.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        for c in cycles(&g) {
            found.push((krate.to_string(), c));
        }
    }
    assert!(
        found.is_empty(),
        "module cycles (crate, modules that use each other through crate:: paths; see ARCHITECTURE.md, Module rules): {found:?}"
    );
}

#[test]
fn no_function_over_100_lines() {
    let mut long = Vec::new();
    let mut all = Vec::new();
    let mut unsafe_total = 0;
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&workspace().join(krate).join("src"), &mut files);
        let tests = test_files(&files);
        for f in files {
            let rel = f
                .strip_prefix(workspace())
                .unwrap()
                .to_string_lossy()
                .to_string();
            let text = non_test_text(&f, &tests);
            unsafe_total += unsafe_count(&text);
            for (name, line, len) in functions(&text) {
                all.push((len, format!("{rel}:{line} {name}")));
                let allowed = LONG_FN_ALLOWED.iter().any(|(p, _)| *p == rel);
                if len > MAX_FN_LINES && !allowed {
                    long.push(format!("{rel}:{line} {name} ({len} lines)"));
                }
            }
        }
    }
    if report() {
        all.sort();
        println!("longest functions:");
        for (len, f) in all.iter().rev().take(15) {
            println!("  {len:4} {f}");
        }
        println!("non-test unsafe blocks, impls and fns: {unsafe_total}");
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_scanner_sees_edges_cycles_and_lengths() {
    let refs = crate_refs(
        "use crate::vm::{A, B};\nuse crate::{shm::Frame, topology};\nlet x = crate::monitor::start();\n// crate::commented\n$crate::macro_only\n",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["monitor", "shm", "topology", "vm"]
    );
    let mut g = BTreeMap::new();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    g.insert("a".to_string(), set(&["b"]));
    g.insert("b".to_string(), set(&["c"]));
    g.insert("c".to_string(), set(&["a"]));
    g.insert("d".to_string(), set(&["a"]));
    assert_eq!(cycles(&g), [vec!["a", "b", "c"]]);
    let f = functions(
        "pub fn short() {\n    let s = \"}\";\n}\nfn decl();\npub(crate) fn long() -> u8 {\n    if x {\n        1\n    } else { '}' as u8 }\n}\n",
    );
    assert_eq!(f, [("short".to_string(), 1, 3), ("long".to_string(), 5, 5)]);
    assert_eq!(
        unsafe_count(
            "unsafe { x }\n// unsafe { y }\nunsafe impl Send for X {}\nlet not_unsafe = 1;\n"
        ),
        2
    );
}
