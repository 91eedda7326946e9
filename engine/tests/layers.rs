//! The engine's layout, checked: which module imports which, file sizes,
//! and where `Group` is implemented.
//!
//! The module graph is read from the source (every `use` and every
//! `crate::`/`super::` path, test modules included, comments not), one
//! node per file. It must have no cycle: no two modules import each other,
//! directly or around a circle. The records and the store port sit at the
//! bottom and import nothing above them. No source file is over
//! [`MAX_LINES`] lines before its unit tests, and `Group` is implemented
//! only in the file that defines it.
//!
//! `cargo test -p kith-engine --test layers -- --nocapture` prints the
//! graph.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The most lines a source file may have before its unit tests.
const MAX_LINES: usize = 1_000;

/// The bottom of `group`: stored records, the store port, and the plain
/// types they are made of. They import only each other.
const BOTTOM: &[&str] = &[
    "group::records",
    "group::store",
    "group::intent",
    "group::error",
    "group::metadata",
    "group::gating",
];

struct Source {
    module: String,
    path: PathBuf,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path
                .strip_prefix(&root)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("readable source");
            Source {
                module: parts.join("::"),
                path,
                text,
            }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and string literals, which may hold paths
/// that are not imports (doc links, messages).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path a source names, with how many inline modules (`mod tests
/// { .. }`) enclose it: the trees of its `use` items, expanded, and the
/// `crate::` and `super::` paths written inline.
fn paths(code: &str) -> Vec<(String, usize)> {
    let depths = inline_depths(code);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find_use(&code[from..]) {
        let start = from + at;
        let tail = &code[start..];
        let end = tail.find(';').unwrap_or(tail.len());
        let mut expanded = Vec::new();
        expand("", tail[..end].trim(), &mut expanded);
        out.extend(expanded.into_iter().map(|p| (p, depths[start])));
        from = start + end;
    }
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (offset, _) = chars[i];
        let word_start = i == 0 || !(chars[i - 1].1.is_alphanumeric() || chars[i - 1].1 == '_');
        let here = &code[offset..];
        if word_start && (here.starts_with("crate::") || here.starts_with("super::")) {
            let len = here
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(here.len());
            let path = here[..len].trim_end_matches(':');
            // A path that opens a use tree (`crate::group::{..}`) or a glob
            // was read with its tree above.
            let opens_tree = here[len..].starts_with(['{', '*']);
            if !opens_tree {
                out.push((path.to_owned(), depths[offset]));
            }
            i += here[..len].chars().count();
        } else {
            i += 1;
        }
    }
    out
}

/// For each byte of `code`, how many inline modules enclose it.
fn inline_depths(code: &str) -> Vec<usize> {
    let mut depths = vec![0; code.len() + 1];
    // One entry per open brace: whether it opened an inline module.
    let mut stack: Vec<bool> = Vec::new();
    let mut depth = 0;
    for (offset, c) in code.char_indices() {
        match c {
            '{' => {
                let before = code[..offset].trim_end();
                let words: Vec<&str> = before.split_whitespace().rev().take(2).collect();
                let is_mod = words.len() == 2 && words[1] == "mod";
                stack.push(is_mod);
                if is_mod {
                    depth += 1;
                }
            }
            '}' if stack.pop() == Some(true) => depth -= 1,
            _ => {}
        }
        depths[offset] = depth;
    }
    depths[code.len()] = depth;
    depths
}

/// The start of the next `use` tree (after the keyword).
fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find("use ") {
        let start = from + at;
        let before = text[..start].chars().last();
        if before.is_none_or(|c| c.is_whitespace() || c == ';' || c == '{' || c == '}') {
            return Some(start + 4);
        }
        from = start + 4;
    }
    None
}

/// Expand a use tree (`a::{b, c::{d, e}}`) into paths under `prefix`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let leaf = tree.split(" as ").next().unwrap_or(tree).trim();
            if !leaf.is_empty() {
                out.push(join(prefix, leaf));
            }
        }
        Some(open) => {
            let head = tree[..open].trim().trim_end_matches("::");
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let base = join(prefix, head);
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&base, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&base, &inner[start..], out);
        }
    }
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}::{rest}"),
    }
}

/// The module a path names, as the longest known module prefix, seen from
/// `module` (inside `inline` inline modules); `None` for paths outside the
/// crate.
fn resolve(module: &str, inline: usize, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    match segments.first() {
        Some(&"crate") => {
            base.clear();
            segments.remove(0);
        }
        Some(&"super") => {
            // `super` leaves the enclosing inline modules first: inside a
            // file's `mod tests`, `super` is the file's own module.
            let mut inline = inline;
            while segments.first() == Some(&"super") {
                if inline > 0 {
                    inline -= 1;
                } else {
                    base.pop();
                }
                segments.remove(0);
            }
        }
        Some(&"self") => {
            segments.remove(0);
        }
        // A relative path names a child module (`use history::X` in
        // `group/mod.rs`), or something outside the crate.
        Some(first) if modules.contains(&join(module, first)) => {}
        _ => return None,
    }
    let mut best = None;
    for len in 0..=segments.len() {
        let candidate = base
            .iter()
            .chain(segments[..len].iter())
            .copied()
            .collect::<Vec<_>>()
            .join("::");
        if modules.contains(&candidate) {
            best = Some(candidate);
        }
    }
    best
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &sources {
        let edges = graph.entry(source.module.clone()).or_default();
        for (path, inline) in paths(&code(&source.text)) {
            if let Some(target) = resolve(&source.module, inline, &path, &modules)
                && target != source.module
                && !target.is_empty()
            {
                edges.insert(target);
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for next in graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[node].min(state.low[next]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(next) {
                let low = state.low[node].min(state.index[next]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                component.push(top.to_owned());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.out
}

#[test]
fn no_module_imports_another_that_imports_it() {
    let graph = graph();
    for (module, edges) in &graph {
        let shown: Vec<&str> = edges.iter().map(String::as_str).collect();
        println!(
            "{} -> {}",
            if module.is_empty() { "crate" } else { module },
            shown.join(", ")
        );
    }
    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_checker_finds_a_cycle_and_reads_nested_use_trees() {
    let mut paths_found = Vec::new();
    expand("", "super::{a::{B, c::D}, e as f}", &mut paths_found);
    assert_eq!(paths_found, ["super::a::B", "super::a::c::D", "super::e"]);
    let modules: BTreeSet<String> = ["group", "group::a", "group::a::c", "group::e"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        resolve("group::x", 0, "super::a::c::D", &modules).as_deref(),
        Some("group::a::c")
    );
    assert_eq!(
        resolve("group::x", 0, "crate::group::Thing", &modules).as_deref(),
        Some("group")
    );
    assert_eq!(resolve("group::x", 0, "std::mem", &modules), None);
    assert_eq!(
        resolve("group", 0, "a::c::D", &modules).as_deref(),
        Some("group::a::c")
    );
    // In a file's `mod tests`, `super` is the file.
    assert_eq!(
        resolve("group::a", 1, "super::B", &modules).as_deref(),
        Some("group::a")
    );
    let found = paths(
        "use a::B;\nmod tests {\n    use super::*;\n}\nfn f() { super::x::y(); crate::{z}; }",
    );
    assert_eq!(
        found,
        [
            ("a::B".to_owned(), 0),
            ("super::*".to_owned(), 1),
            ("super::x::y".to_owned(), 0),
        ]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    assert_eq!(code("a // crate::x\n\"crate::y\" b"), "a \n\"\" b");
}

#[test]
fn the_records_and_the_store_port_import_nothing_above_them() {
    let graph = graph();
    for module in BOTTOM {
        let edges = graph.get(*module).expect("a bottom module exists");
        for target in edges {
            let allowed = BOTTOM.contains(&target.as_str())
                || target.starts_with("identity")
                || target.starts_with("delivery");
            assert!(allowed, "{module} imports {target}, which sits above it");
        }
    }
}

#[test]
fn no_source_file_is_over_the_size_limit() {
    for source in sources() {
        // Unit tests and test-only hooks are apart.
        let before_tests = ["#[cfg(test)]", "#[cfg(any(test"]
            .iter()
            .filter_map(|marker| source.text.find(marker))
            .min()
            .map_or(source.text.as_str(), |at| &source.text[..at]);
        let lines = before_tests.lines().count();
        assert!(
            lines <= MAX_LINES,
            "{} has {lines} lines before its tests (at most {MAX_LINES})",
            source.path.display()
        );
    }
}

#[test]
fn group_is_implemented_only_where_it_is_defined() {
    for source in sources() {
        let code = code(&source.text);
        let implements = code.contains("impl Group {") || code.contains("impl Group<");
        if implements {
            assert_eq!(
                source.module,
                "group::group",
                "{} implements Group outside group/group.rs",
                source.path.display()
            );
        }
    }
}
