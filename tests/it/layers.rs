//! Module layering: every `crate::<module>` path (and every `super::` that climbs to the crate
//! root) in `src/` outside `#[cfg(test)]` items must point to a module on a lower layer, or to
//! one on the same layer only where `SAME_LAYER` allows it. Comments, doc comments and string
//! literals do not count. A top-level module missing from `LAYERS` fails too, so a new module
//! has to be placed before it can be used. std only: no parser, no walkdir.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom (0) to top. Dependencies point to a smaller number only.
const LAYERS: &[(&str, u32)] = &[
    ("config", 0),
    ("metrics", 0),
    ("model", 0),
    ("names", 0),
    ("limits", 0),
    ("secrets", 0),
    ("store", 1),
    ("workers", 1),
    ("error", 2),
    ("pki", 3),
    ("events", 3),
    ("audit", 3),
    ("devices", 4),
    ("integrations", 5),
    ("data", 6),
    ("auth", 6),
    ("jobs", 6),
    ("conditions", 6),
    // Campaigns send their install commands as jobs and select targets as rollouts do.
    ("ota", 7),
    // Dashboards check a chart's interval as the aggregate API reads it.
    ("dashboards", 7),
    ("services", 8),
    ("backups", 9),
    ("device_messages", 9),
    // The gateway API handles each sub-device's message as a device's.
    ("gateway", 10),
    ("mqtt", 11),
    ("api", 11),
    ("app", 12),
    ("client", 12),
    ("sim", 13),
    ("cli", 14),
    ("fuzzing", 15), // harness for fuzz/ and tests: nothing in the crate may depend on it
];

/// Same-layer references that are allowed, as (from, to). Empty: no layer needs one today.
const SAME_LAYER: &[(&str, &str)] = &[];

fn layer(m: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|&(_, l)| l)
}

#[test]
fn modules_only_reference_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();

    // Every module declared in lib.rs has a layer.
    let lib = strip(&fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs"));
    let declared = declared_modules(&lib);
    for m in &declared {
        if layer(m).is_none() {
            problems.push(format!("src/lib.rs: module `{m}` has no layer in LAYERS"));
        }
    }

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src");
        let mut modpath: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let last = modpath.pop().expect("file name");
        match last.as_str() {
            "lib.rs" | "main.rs" if modpath.is_empty() => continue,
            "mod.rs" => {}
            f => modpath.push(f.trim_end_matches(".rs").to_string()),
        }
        let me = modpath[0].clone();
        let display = format!("src/{}", rel.to_string_lossy().replace('\\', "/"));
        let text = fs::read_to_string(&path).expect("read source");
        for (pos, target) in references(&text, &modpath) {
            if target == me || !declared.contains(&target) {
                continue; // own module, or `crate::` of something that is not a module
            }
            let (Some(from), Some(to)) = (layer(&me), layer(&target)) else {
                continue; // reported above
            };
            let allowed = to < from || (to == from && SAME_LAYER.contains(&(&*me, &*target)));
            if !allowed {
                let line = text[..pos].matches('\n').count() + 1;
                let code = text.lines().nth(line - 1).unwrap_or("").trim();
                problems.push(format!(
                    "{display}:{line}: `{me}` (layer {from}) uses `{target}` (layer {to}): {code}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} layering violation(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The transports reach storage only through the services, whose failures they see as the
/// domain error: they name nothing of `store` (not even its error type), and never `s.store`.
#[test]
fn transports_do_not_use_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for dir in ["api", "mqtt"] {
        let mut files = Vec::new();
        rust_files(&src.join(dir), &mut files);
        files.sort();
        for path in files {
            let text = fs::read_to_string(&path).expect("read source");
            let code = strip(&text);
            let tests = cfg_test_ranges(&code);
            let in_test = |p: usize| tests.iter().any(|&(a, b)| a <= p && p <= b);
            let mut bad = Vec::new();
            for (p, _) in code.match_indices("crate::store") {
                bad.push(p);
            }
            // `.store` as a field (`s.store.x`, `&s.store`), not an atomic's `.store(..)` or a
            // longer name (`.store_usage`).
            for (p, _) in code.match_indices(".store") {
                let rest = &code[p + ".store".len()..];
                let word_ends = !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_');
                if word_ends && !rest.trim_start().starts_with('(') {
                    bad.push(p);
                }
            }
            for p in bad.into_iter().filter(|p| !in_test(*p)) {
                let line = code[..p].matches('\n').count() + 1;
                problems.push(format!(
                    "{}:{line}: {}",
                    path.strip_prefix(&src).expect("under src").display(),
                    text.lines().nth(line - 1).unwrap_or("").trim()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "transports using the store directly:\n{}",
        problems.join("\n")
    );
}

/// Above `store/`, storage is reached only through its ports (`store::ports`): no `Store`, no
/// sled type, no engine module. The composition root (`app`), the offline commands (`cli`:
/// restore, maintenance) and the fuzzing entry points open the engine itself; unit tests may
/// open a temporary store.
#[test]
fn services_reach_storage_through_ports() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src");
        let top = rel.components().next().expect("a component");
        let top = top.as_os_str().to_string_lossy();
        if ["store", "app.rs", "cli", "fuzzing.rs", "main.rs", "lib.rs"].contains(&top.as_ref()) {
            continue;
        }
        let text = fs::read_to_string(&path).expect("read source");
        let code = strip(&text);
        let tests = cfg_test_ranges(&code);
        let in_test = |p: usize| tests.iter().any(|&(a, b)| a <= p && p <= b);
        let mut bad = Vec::new();
        for (p, _) in code.match_indices("crate::store::") {
            if !code[p + "crate::store::".len()..].starts_with("ports") {
                bad.push(p);
            }
        }
        bad.extend(code.match_indices("sled::").map(|(p, _)| p));
        // The engine's handle by name (`Store`; not `OperatorStore`, `StoreError` or an error
        // variant `Store(..)`).
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        bad.extend(code.match_indices("Store").map(|(p, _)| p).filter(|&p| {
            let rest = &code[p + "Store".len()..];
            !code[..p].ends_with(ident)
                && !code[..p].ends_with("::")
                && !rest.starts_with(ident)
                && !rest.starts_with('(')
        }));
        for p in bad.into_iter().filter(|p| !in_test(*p)) {
            let line = code[..p].matches('\n').count() + 1;
            problems.push(format!(
                "{}:{line}: {}",
                rel.display(),
                text.lines().nth(line - 1).unwrap_or("").trim()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "storage reached around its ports:\n{}",
        problems.join("\n")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `mod x;` / `pub mod x;` at the top of lib.rs (code already stripped).
fn declared_modules(lib: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = lib.as_bytes();
    let mut i = 0;
    while let Some(p) = find_word(lib, "mod", i) {
        i = p + 3;
        let j = skip_ws(b, i);
        let (name, k) = ident(b, j);
        if !name.is_empty() && b.get(skip_ws(b, k)) == Some(&b';') {
            out.insert(name.to_string());
        }
    }
    out
}

/// (byte offset, top-level module) of every reference outside `#[cfg(test)]` items.
fn references(text: &str, modpath: &[String]) -> Vec<(usize, String)> {
    let code = strip(text);
    let b = code.as_bytes();
    let tests = cfg_test_ranges(&code);
    let in_test = |p: usize| tests.iter().any(|&(s, e)| s <= p && p <= e);
    let inline = inline_mods(&code);
    let mut out = Vec::new();

    // crate::x… and crate::{x…, y…}
    let mut i = 0;
    while let Some(p) = find_word(&code, "crate", i) {
        i = p + 5;
        if p > 0 && b[p - 1] == b'$' {
            continue;
        }
        let j = skip_ws(b, i);
        if !code[j..].starts_with("::") {
            continue; // pub(crate), `crate` alone
        }
        let j = skip_ws(b, j + 2);
        if in_test(p) {
            continue;
        }
        if b.get(j) == Some(&b'{') {
            for first in group_heads(&code, j) {
                out.push((p, first));
            }
        } else {
            let (name, _) = ident(b, j);
            if !name.is_empty() {
                out.push((p, name.to_string()));
            }
        }
    }

    // super::super::x that climbs to the crate root
    let mut i = 0;
    while let Some(p) = find_word(&code, "super", i) {
        if p >= 2 && &b[p - 2..p] == b"::" {
            i = p + 5;
            continue; // counted from the first `super` of the chain
        }
        let mut k = 0;
        let mut j = p;
        while code[j..].starts_with("super") && code[j + 5..].trim_start().starts_with("::") {
            k += 1;
            j = skip_ws(b, j + 5);
            j = skip_ws(b, j + 2);
        }
        i = j.max(p + 5);
        if k == 0 || in_test(p) {
            continue;
        }
        let depth = modpath.len() + inline.iter().filter(|&&(s, e)| s < p && p < e).count();
        if k != depth {
            continue; // stays inside the module (or climbs past the root: not Rust)
        }
        if b.get(j) == Some(&b'{') {
            for first in group_heads(&code, j) {
                out.push((p, first));
            }
        } else {
            let (name, _) = ident(b, j);
            if !name.is_empty() {
                out.push((p, name.to_string()));
            }
        }
    }
    out
}

/// First path segment of each entry of a `{a::b, c, d::{e, f}}` group starting at `open`.
fn group_heads(code: &str, open: usize) -> Vec<String> {
    let b = code.as_bytes();
    let close = matching(b, open);
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = open + 1;
    for i in open + 1..=close {
        match b[i] {
            b'{' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b',' | b'}' if depth == 0 => {
                let (name, _) = ident(b, skip_ws(b, start));
                if !name.is_empty() && name != "self" {
                    out.push(name.to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// Byte ranges of items annotated `#[cfg(test)]` (attribute through `;` or closing brace).
fn cfg_test_ranges(code: &str) -> Vec<(usize, usize)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for (p, _) in code.match_indices('#') {
        let squeezed: String = code[p..]
            .chars()
            .filter(|c| !c.is_whitespace())
            .take("#![cfg(test)]".len())
            .collect();
        if squeezed == "#![cfg(test)]" {
            return vec![(0, b.len())]; // the whole file is test code
        }
        if !squeezed.starts_with("#[cfg(test)]") {
            continue;
        }
        let attr_end = p + code[p..].find(']').expect("attribute end");
        let mut depth = 0i32;
        let mut j = attr_end + 1;
        let end = loop {
            match b.get(j) {
                None => break b.len(),
                Some(b'(' | b'[') => depth += 1,
                Some(b')' | b']') => depth -= 1,
                Some(b';') if depth == 0 => break j,
                Some(b'{') if depth == 0 => break matching(b, j),
                _ => {}
            }
            j += 1;
        };
        out.push((p, end));
    }
    out
}

/// Brace ranges of inline `mod name { … }` blocks.
fn inline_mods(code: &str) -> Vec<(usize, usize)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find_word(code, "mod", i) {
        i = p + 3;
        let (name, k) = ident(b, skip_ws(b, i));
        let k = skip_ws(b, k);
        if !name.is_empty() && b.get(k) == Some(&b'{') {
            out.push((k, matching(b, k)));
        }
    }
    out
}

fn matching(b: &[u8], open: usize) -> usize {
    let mut depth = 0;
    for (i, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    b.len()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Next occurrence of `word` at or after `from` with no identifier character either side.
fn find_word(code: &str, word: &str, from: usize) -> Option<usize> {
    let b = code.as_bytes();
    let mut i = from;
    while let Some(off) = code.get(i..)?.find(word) {
        let p = i + off;
        let end = p + word.len();
        if (p == 0 || !is_ident(b[p - 1])) && (end >= b.len() || !is_ident(b[end])) {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn ident(b: &[u8], i: usize) -> (&str, usize) {
    let mut j = i;
    while j < b.len() && is_ident(b[j]) {
        j += 1;
    }
    (std::str::from_utf8(&b[i..j]).unwrap_or(""), j)
}

/// The source with comments and the insides of string and char literals replaced by spaces
/// (newlines kept, so byte offsets and line numbers stay those of the file).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let n = b.len();
    let mut code = b.to_vec();
    let blank = |code: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut code[from..to.min(n)] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < n {
        let prev_ident = i > 0 && is_ident(b[i - 1]);
        if b[i..].starts_with(b"//") {
            let end = src[i..].find('\n').map_or(n, |e| i + e);
            blank(&mut code, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < n && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut code, i, j);
            i = j;
        } else if !prev_ident && raw_string_start(b, i).is_some() {
            let (body, hashes) = raw_string_start(b, i).expect("checked");
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = (body..n).find(|&j| b[j..].starts_with(&close)).unwrap_or(n);
            blank(&mut code, body, end);
            i = end + close.len();
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < n && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut code, i + 1, j);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal closes within a few bytes; a lifetime or label does not.
            let len = if b.get(i + 1) == Some(&b'\\') {
                (i + 3..n.min(i + 14))
                    .find(|&j| b[j] == b'\'')
                    .map(|j| j - i)
            } else {
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(1 + ch)
            };
            match len {
                Some(l) => {
                    blank(&mut code, i + 1, i + l);
                    i += l + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(code).expect("blanking keeps UTF-8")
}

/// `r"`, `r#"`, `br##"`, …: the offset of the literal's first byte and the number of `#`.
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if b.get(j) == Some(&b'b') || b.get(j) == Some(&b'c') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    (b.get(j + hashes) == Some(&b'"')).then_some((j + hashes + 1, hashes))
}
