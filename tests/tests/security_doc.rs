//! docs/security.md backs every line with a test: each row of its tables
//! names at least one, and every test it names exists (a `#[test]` or
//! `#[tokio::test]` function that is not ignored, not a helper) — an end-to-end
//! test as `tests/tests/FILE.rs::name` (or `worker/tests/FILE.rs::name`),
//! a unit test as `crate::module::tests::name` (found in that module's
//! file). `{a, b}` names several in one place; `…::name` is in the file
//! of the previous reference of the same cell.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The source files a reference points at, and the test names.
fn resolve(reference: &str, previous_file: Option<&PathBuf>) -> (Vec<PathBuf>, Vec<String>) {
    if let Some(names) = reference.strip_prefix("…::") {
        let file = previous_file.expect("`…::` after a file").clone();
        return (vec![file], split_names(names));
    }
    let (path, names) = match reference.split_once(".rs::") {
        Some((file, names)) => (vec![repo().join(format!("{file}.rs"))], names),
        None => {
            // crate::module::…::tests::names
            let (module, names) = reference
                .rsplit_once("::tests::")
                .unwrap_or_else(|| panic!("not a test reference: {reference}"));
            let mut parts = module.split("::");
            let krate = parts.next().unwrap();
            let dir = match krate {
                "worker" => "worker/src",
                "shared" => "shared/src",
                "heartalk" | "supervisor" => "supervisor/src",
                other => panic!("unknown crate {other} in {reference}"),
            };
            let rest: Vec<&str> = parts.collect();
            let base = repo().join(dir).join(rest.join("/"));
            let candidates = vec![
                base.with_extension("rs"),
                base.join("mod.rs"),
                PathBuf::from(format!("{}_tests.rs", base.display())),
                base.join("tests.rs"),
            ];
            (candidates, names)
        }
    };
    (path, split_names(names))
}

/// `name` or `{a, b}`.
fn split_names(names: &str) -> Vec<String> {
    names
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .map(|n| n.trim().to_string())
        .collect()
}

/// Whether `source` defines a test called `name`: a `fn name(` whose
/// attributes (the lines right above it, doc comments between them
/// allowed) include `#[test]` or `#[tokio::test…]` and no ignore
/// attribute. A helper function of that name does not count.
fn defines_test(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    let wanted = format!("fn {name}(");
    lines.iter().enumerate().any(|(i, line)| {
        let line = line.trim_start();
        if !(line.starts_with(&wanted) || line.starts_with(&format!("async {wanted}"))) {
            return false;
        }
        let attributes: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
            .filter(|l| l.starts_with("#["))
            .collect();
        attributes
            .iter()
            .any(|a| *a == "#[test]" || a.starts_with("#[tokio::test"))
            && !attributes.iter().any(|a| a.starts_with(IGNORE))
    })
}

/// The opening of the attribute that skips a test, spelled in two parts so
/// that this file does not read as holding a skipped test itself.
const IGNORE: &str = concat!("#[", "ignore");

#[test]
fn a_test_is_told_from_a_helper_of_the_same_name() {
    let source = format!(
        "#[test]\n/// Doc.\nfn real() {{}}\n\nfn helper() {{}}\n\
         #[tokio::test(flavor = \"multi_thread\")]\nasync fn asynchronous() {{}}\n\
         #[test]\n{IGNORE}]\nfn ignored() {{}}\n"
    );
    let source = source.as_str();
    assert!(defines_test(source, "real"));
    assert!(defines_test(source, "asynchronous"));
    assert!(!defines_test(source, "helper"));
    assert!(!defines_test(source, "ignored"));
    assert!(!defines_test(source, "missing"));
}

#[test]
fn every_row_names_tests_that_exist() {
    let doc = std::fs::read_to_string(repo().join("docs/security.md")).unwrap();
    let mut rows = 0;
    let mut checked = 0;
    for line in doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| can "))
    {
        rows += 1;
        let cells: Vec<&str> = line.split(" | ").collect();
        let last = cells.last().unwrap();
        let refs: Vec<&str> = last
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|r| r.contains("::"))
            .collect();
        assert!(!refs.is_empty(), "a row without a test: {line}");
        let mut previous: Option<PathBuf> = None;
        for reference in refs {
            let (files, names) = resolve(reference, previous.as_ref());
            let sources: Vec<String> = files
                .iter()
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .collect();
            assert!(
                !sources.is_empty(),
                "no source file for `{reference}`: {files:?}"
            );
            for name in &names {
                assert!(
                    sources.iter().any(|s| defines_test(s, name)),
                    "`{reference}`: no test `fn {name}(` (under #[test] or #[tokio::test], not ignored) in {files:?}"
                );
                checked += 1;
            }
            if files.len() == 1 {
                previous = Some(files[0].clone());
            }
        }
    }
    assert!(rows >= 15 && checked >= 30, "{rows} rows, {checked} tests");
}
