//! Bad config files: every error is printed with file:line:column, the exit
//! code is 64, and `heartalk run` starts nothing.

mod helper;

use std::process::Command;

use helper::*;

fn check(text: &str) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(workspace_bin("heartalk"))
        .arg("check")
        .arg(&file)
        .env_remove("PORT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap(), stderr, dir)
}

#[test]
fn each_error_class_is_reported_with_its_line() {
    let cases = [
        (
            "syntax",
            "[[apps]]\nname = \"a\"\ninstances = = 2\n",
            3,
            "TOML syntax",
        ),
        (
            "unknown key",
            "[[apps]]\nname = \"a\"\nmax_memroy = \"1G\"\n",
            3,
            "did you mean `max_memory`",
        ),
        (
            "bad type",
            "[[apps]]\nname = \"a\"\nmax_restarts = \"ten\"\n",
            3,
            "must be an integer",
        ),
        (
            "bad size",
            "[[apps]]\nname = \"a\"\nmax_memory = \"12X\"\n",
            3,
            "unknown size unit",
        ),
        (
            "bad duration",
            "[[apps]]\nname = \"a\"\n\nkill_timeout = \"soon\"\n",
            4,
            "kill_timeout",
        ),
        (
            "instances = 0",
            "[[apps]]\nname = \"a\"\ninstances = 0\n",
            3,
            "at least one worker",
        ),
    ];
    for (class, text, line, needle) in cases {
        let (code, stderr, dir) = check(text);
        assert_eq!(code, 64, "{class}: {stderr}");
        let place = format!("{}:{line}:", dir.path().join("ecosystem.toml").display());
        assert!(
            stderr.contains(&place),
            "{class}: expected {place} in {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{class}: expected {needle:?} in {stderr}"
        );
    }
}

#[test]
fn all_errors_of_a_file_are_printed_at_once() {
    let (code, stderr, _dir) = check(
        "[[apps]]\nname = \"a\"\ninstances = 0\nmax_memory = \"lots\"\nkill_timeout = true\ncolour = 1\n",
    );
    assert_eq!(code, 64);
    for line in 3..=6 {
        assert!(
            stderr.contains(&format!("ecosystem.toml:{line}:")),
            "line {line} missing: {stderr}"
        );
    }
    assert!(stderr.contains("4 error(s)"), "{stderr}");
}

#[test]
fn a_good_file_passes() {
    let (code, stderr, _dir) =
        check("[[apps]]\nname = \"a\"\ninstances = 2\nmax_memory = \"512M\"\n");
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn the_repository_config_is_valid() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ecosystem.toml");
    let out = Command::new(workspace_bin("heartalk"))
        .arg("check")
        .arg(&repo)
        .env_remove("PORT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_with_a_bad_file_starts_nothing() {
    let mut sup = Supervisor::start(&test_worker_config(2, "serve", "max_memory = \"12X\""));
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(64));
    let written = std::fs::read_to_string(sup.config_path()).unwrap();
    let line = 1 + written
        .lines()
        .position(|l| l.starts_with("max_memory"))
        .unwrap();
    assert!(
        sup.stderr().contains(&format!("ecosystem.toml:{line}:")),
        "{}",
        sup.stderr()
    );
    assert!(sup.events("listening").is_empty());
    assert!(sup.events("worker_spawned").is_empty());
}
