//! `heartalk completions SHELL` and `heartalk man`, used the way an operator
//! uses them: the bash script is sourced and asked to complete a partial
//! command line, fish is asked the same through `complete -C`, zsh parses
//! its script, and every man page renders through groff with warnings on.
//! All of them come from the same clap definition as the parser, so a verb
//! added there shows up here without anyone writing it twice.

mod helper;

use std::path::Path;
use std::process::{Command, Output};

use helper::workspace_bin;

fn heartalk(args: &[&str]) -> Output {
    let out = Command::new(workspace_bin("heartalk"))
        .args(args)
        .output()
        .expect("run heartalk");
    assert!(
        out.status.success(),
        "heartalk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn script(shell: &str, dir: &Path) -> std::path::PathBuf {
    let path = dir.join(format!("heartalk.{shell}"));
    std::fs::write(&path, heartalk(&["completions", shell]).stdout).unwrap();
    path
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The verbs the parser accepts (from `heartalk --help`).
fn verbs() -> Vec<String> {
    let help = String::from_utf8(heartalk(&["--help"]).stdout).unwrap();
    let commands = help.split("Commands:").nth(1).expect("a Commands section");
    commands
        .lines()
        .skip(1)
        .map_while(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|v| v != "help")
        .collect()
}

#[test]
fn bash_completes_verbs_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = script("bash", dir.path());
    let complete = |words: &str| {
        let n = words.split_whitespace().count() - usize::from(!words.ends_with(' '));
        let line = format!(
            "source {}; COMP_LINE='{words}'; COMP_WORDS=({words}{}); COMP_CWORD={n}; \
             _heartalk heartalk \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            if words.ends_with(' ') { "''" } else { "" },
        );
        run("bash", &["-c", &line])
    };
    let all = complete("heartalk ");
    for verb in verbs() {
        assert!(
            all.lines().any(|l| l == verb),
            "`{verb}` not offered: {all}"
        );
    }
    let re = complete("heartalk re");
    assert_eq!(
        re.lines().collect::<Vec<_>>(),
        ["reload", "restart"],
        "{re}"
    );
    let rel = complete("heartalk rel");
    assert_eq!(rel.lines().collect::<Vec<_>>(), ["reload"], "{rel}");
    let flags = complete("heartalk logs --");
    for flag in ["--follow", "--lines", "--app", "--slot", "--since", "--raw"] {
        assert!(
            flags.lines().any(|l| l == flag),
            "{flag} not offered: {flags}"
        );
    }
    let flags = complete("heartalk status --");
    for flag in ["--json", "--config", "--socket"] {
        assert!(
            flags.lines().any(|l| l == flag),
            "{flag} not offered: {flags}"
        );
    }
}

#[test]
fn fish_completes_verbs_and_zsh_parses_its_script() {
    let dir = tempfile::tempdir().unwrap();
    let fish = script("fish", dir.path());
    let offered = run(
        "fish",
        &[
            "--no-config",
            "-c",
            &format!("source {}; complete -C 'heartalk '", fish.display()),
        ],
    );
    for verb in verbs() {
        assert!(
            offered.lines().any(|l| l.split('\t').next() == Some(&verb)),
            "fish does not offer `{verb}`: {offered}"
        );
    }
    let zsh = script("zsh", dir.path());
    run("zsh", &["-n", zsh.to_str().unwrap()]);
    let text = std::fs::read_to_string(&zsh).unwrap();
    assert!(text.starts_with("#compdef heartalk"), "{}", &text[..40]);
}

#[test]
fn every_man_page_renders_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    heartalk(&["man", "--dir", dir.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    let mut want: Vec<String> = verbs()
        .iter()
        .map(|v| format!("heartalk-{v}.1"))
        .chain(["heartalk.1".to_string(), "heartalk-help.1".to_string()])
        .collect();
    want.sort();
    assert_eq!(pages, want);
    for page in &pages {
        let path = dir.path().join(page);
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff (scripts/deps.sh installs groff-base)");
        assert!(out.status.success(), "{page}");
        assert!(
            out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // heartalk(1) names every verb's page and the exit codes.
    let main = String::from_utf8(heartalk(&["man"]).stdout).unwrap();
    for verb in verbs() {
        assert!(main.contains(&format!("heartalk\\-{verb}")), "{verb}");
    }
    for code in ["64", "69", "71", "75"] {
        assert!(main.contains(&format!(".TP\n{code}\n")), "exit {code}");
    }
}
