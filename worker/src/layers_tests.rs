//! The layering of `worker/src`, checked: dependencies point one way, from
//! the edge down (`http` → `pipeline` → infrastructure), and the modules at
//! the top of the tree import one another without a circle.
//!
//! Every `.rs` file under `src/` is read and every `crate::<module>` path in
//! its code (comments are skipped; `crate::{a, b::c}` groups count each of
//! their names) is an import of that module. A file may import its own layer
//! or one below it, never one above; `lib.rs` and `main.rs`, the wiring, sit
//! on top. A module that is in no layer fails the test until it is given one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The wiring: `lib.rs` (and its items, such as `crate::run`), `main.rs`.
const TOP: u8 = 4;

/// The layer of each top-level module of the crate (a folder or a root file).
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "lib" | "main" | "layers_tests" => TOP,
        "http" => 3,
        "pipeline" => 2,
        "provider" | "cache" | "limits" | "runtime" | "settings" | "telemetry" | "logs" => 1,
        _ => return None,
    })
}

fn layer_name(layer: u8) -> &'static str {
    match layer {
        TOP => "the wiring",
        3 => "http",
        2 => "pipeline",
        _ => "infrastructure",
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: its folder under `src/`, or the
/// stem of a root file.
fn module_of(relative: &Path) -> String {
    let first = relative.components().next().unwrap().as_os_str();
    let first = Path::new(first);
    if relative.components().count() > 1 {
        first.to_string_lossy().into_owned()
    } else {
        first.file_stem().unwrap().to_string_lossy().into_owned()
    }
}

/// The code of a line: what comes before a `//` comment.
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `line` names through `crate::`.
fn imports(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code(line);
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the names at depth 1.
            let mut depth = 1;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && !c.is_whitespace() => {
                        start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            found.push(name.to_string());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push(name.to_string());
            }
        }
    }
    found
}

/// One import of a module by another: where it is and what it says.
struct Import {
    file: String,
    line: usize,
    text: String,
}

/// Every import between two different top-level modules, by (from, to),
/// with the first place each file makes it. Multi-line `use crate::{...}`
/// groups are joined into one statement first.
fn module_imports() -> BTreeMap<(String, String), Vec<Import>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {files:?} under {root:?}");
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&root).unwrap()))
        .collect();
    let mut edges = BTreeMap::new();
    for path in &files {
        let relative = path.strip_prefix(&root).unwrap();
        let from = module_of(relative);
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut n = 0;
        while n < lines.len() {
            let first = n;
            let mut statement = code(lines[n]).to_string();
            // A group opened on this line and closed further down.
            if statement.contains("crate::{") {
                while statement.matches('{').count() > statement.matches('}').count()
                    && n + 1 < lines.len()
                {
                    n += 1;
                    statement.push(' ');
                    statement.push_str(code(lines[n]));
                }
            }
            n += 1;
            for target in imports(&statement) {
                // `crate::run` and the like: items of `lib.rs`.
                let to = if modules.contains(&target) {
                    target
                } else {
                    "lib".to_string()
                };
                if to == from {
                    continue;
                }
                let file = relative.display().to_string();
                let made: &mut Vec<Import> = edges.entry((from.clone(), to)).or_default();
                if !made.iter().any(|i| i.file == file) {
                    made.push(Import {
                        file,
                        line: first + 1,
                        text: lines[first].trim().to_string(),
                    });
                }
            }
        }
    }
    edges
}

#[test]
fn the_scan_reads_paths_and_groups() {
    assert_eq!(imports("use crate::state::AppState;"), ["state"]);
    assert_eq!(
        imports("use crate::{http::{cors, router}, pipeline, settings::Settings};"),
        ["http", "pipeline", "settings"]
    );
    assert_eq!(
        imports("let p = crate::cache::Policy::from(crate::http::x); // crate::lib"),
        ["cache", "http"]
    );
    assert!(imports("/// see [`crate::http::budget`]").is_empty());
    assert!(imports("pub(crate) fn f() {}").is_empty());
}

#[test]
fn every_module_is_in_a_layer() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let unplaced: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&root).unwrap()))
        .filter(|m| layer(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer (give them one in layers_tests.rs): {unplaced:?}"
    );
}

#[test]
fn dependencies_point_down_from_http_to_pipeline_to_infrastructure() {
    let mut upward = Vec::new();
    for ((from, to), made) in module_imports() {
        let (Some(a), Some(b)) = (layer(&from), layer(&to)) else {
            continue; // every_module_is_in_a_layer names it
        };
        if b <= a {
            continue;
        }
        for at in made {
            upward.push(format!(
                "{}:{}: {} ({}) imports {} ({}): {}",
                at.file,
                at.line,
                from,
                layer_name(a),
                to,
                layer_name(b),
                at.text
            ));
        }
    }
    assert!(
        upward.is_empty(),
        "imports of a higher layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_top_level_modules_import_one_another_without_a_circle() {
    let edges = module_imports();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth-first search; a module met again on the current path closes a
    // circle.
    fn visit<'a>(
        m: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m);
            return Some(circle);
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for n in next.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in next.keys() {
        if let Some(circle) = visit(m, &next, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = circle
                .windows(2)
                .map(|w| {
                    let at = &edges[&(w[0].to_string(), w[1].to_string())][0];
                    format!("{} → {}: {}:{}: {}", w[0], w[1], at.file, at.line, at.text)
                })
                .collect();
            panic!("an import circle:\n{}", steps.join("\n"));
        }
    }
}
