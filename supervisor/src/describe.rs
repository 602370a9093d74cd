//! `heartalk describe APP`: one app in full — PM2's `pm2 describe`. The
//! effective config (what the running generation was started with, and
//! `heartalk scale`'s count if one holds), its environment with the
//! values of secrets masked, every slot as `status` shows it, restarts and
//! watchdog expiries by reason, the latest worker exits with their reasons,
//! and the last reload's outcome. Built from the fleet's picture between
//! events; the masking and the rendering are pure functions.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use shared::control::{Description, ExitRecord, Status};

use crate::fleet::FleetView;
use crate::status::{bytes, duration};

/// What a masked value reads as: the same for every secret, so its length
/// is not told either.
pub const MASK: &str = "********";

/// Parts of a variable's name (split at `_`, `-` ...) that make its value a
/// secret: `BYTEPLUS_API_KEY`, but not `KEYWORDS_CONFIG`.
const SECRET_PARTS: [&str; 21] = [
    "KEY",
    "KEYS",
    "APIKEY",
    "SECRET",
    "SECRETS",
    "PASSWORD",
    "PASSWD",
    "PASS",
    "PWD",
    "TOKEN",
    "TOKENS",
    "CREDENTIAL",
    "CREDENTIALS",
    "PRIVATE",
    "AUTH",
    "AUTHORIZATION",
    "DSN",
    "COOKIE",
    "SALT",
    "SIGNING",
    "SIGNATURE",
];

/// Words that make it a secret's wherever they appear (`GITHUBTOKEN`).
const SECRET_INFIXES: [&str; 5] = ["SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL"];

/// Whether a variable or parameter called `name` holds a secret.
fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|part| SECRET_PARTS.contains(&part))
        || SECRET_INFIXES.iter().any(|w| upper.contains(w))
}

/// `value` as `describe` may show it: masked whole when `name` is a
/// secret's (`JWT_SECRET`, `BYTEPLUS_API_KEY`, `REDIS_PASSWORD` ...), else
/// with the secrets inside it masked (see [`mask_value`]).
pub fn mask(name: &str, value: &str) -> String {
    if !value.is_empty() && secret_name(name) {
        return MASK.to_string();
    }
    mask_value(value)
}

/// Masks the secrets inside a value that is not a secret as a whole: the
/// userinfo of every URL in it (`redis://:pw@host` → `redis://:********@host`;
/// a user alone, often a token, is masked whole), and the value of every
/// `name=value` pair whose name is a secret's (`?token=`, `&password=`,
/// `X-Amz-Signature=`, `password=pw` in a DSN, `--api-key=...`).
pub fn mask_value(value: &str) -> String {
    mask_pairs(&mask_userinfo(value))
}

/// Where a URL's authority (or a `name=value` pair) ends: lists and DSNs
/// separate their parts with these.
fn separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | '&' | '?')
}

fn mask_userinfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        // Before the next URL of a list (or whitespace), the last `@` ends
        // the userinfo, as the log masker has it: a password may hold an
        // unencoded `/`, `@`, `?`, `#`, `,` or `;`, and a path or query
        // with an `@` is masked too (better too much than a password shown).
        let end = rest
            .find(char::is_whitespace)
            .unwrap_or(rest.len())
            .min(next_url(rest));
        match rest[..end].rfind('@') {
            Some(at) if at > 0 => {
                match rest[..at].split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(MASK),
                }
                rest = &rest[at..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

/// Where the next URL in `text` starts (its scheme's first character), or
/// `text.len()`.
fn next_url(text: &str) -> usize {
    let Some(at) = text.find("://") else {
        return text.len();
    };
    text[..at]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .map_or(0, |i| i + 1)
}

fn mask_pairs(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        let end = rest.find(separator).unwrap_or(rest.len());
        let part = &rest[..end];
        match part.split_once('=') {
            Some((name, v)) if !v.is_empty() && secret_name(name) => {
                // A secret's value runs to whitespace or the next `&`: it
                // may hold a `,`, `;` or `?` of its own.
                let from = name.len() + 1;
                let value_end = rest[from..]
                    .find(|c: char| c.is_whitespace() || c == '&')
                    .map_or(rest.len(), |i| from + i);
                out.push_str(name);
                out.push('=');
                out.push_str(MASK);
                rest = &rest[value_end..];
            }
            _ => {
                out.push_str(part);
                rest = &rest[end..];
            }
        }
        // The separator itself.
        if let Some(c) = rest.chars().next() {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The worker's arguments with secrets masked: inside each one, and the
/// one after a flag named like a secret (`--token abc`).
pub fn mask_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        if hide_next && !arg.starts_with('-') {
            out.push(MASK.to_string());
        } else {
            out.push(mask_value(arg));
        }
        hide_next = arg.starts_with('-') && !arg.contains('=') && secret_name(arg);
    }
    out
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The description of `app`, or `None` if the fleet has no such app.
/// `status` is the fleet's status report (its rows are reused for the
/// app's slots).
pub fn build(view: &FleetView, status: &Status, app: &str, now: Instant) -> Option<Description> {
    let a = view.apps.iter().find(|a| a.name == app)?;
    let c = &a.config;
    let mut settings = Map::new();
    let mut set = |k: &str, v: Value| {
        settings.insert(k.to_string(), v);
    };
    set("max_surge", c.max_surge.into());
    set("listen_timeout", human(c.listen_timeout).into());
    set("kill_timeout", human(c.kill_timeout).into());
    set("min_uptime", human(c.min_uptime).into());
    set("max_restarts", c.max_restarts.into());
    set("restart_delay", human(c.restart_delay).into());
    set("restart_delay_max", human(c.restart_delay_max).into());
    set("max_memory", c.max_memory.map(bytes).into());
    set("max_memory_hard", c.max_memory_hard.map(bytes).into());
    set("memory_strikes", c.memory_strikes.into());
    set(
        "memory_check_interval",
        human(c.memory_check_interval).into(),
    );
    set("watchdog", c.watchdog.map(human).into());
    let by_app = |rows: &[(String, &'static str, u64)]| -> BTreeMap<String, u64> {
        rows.iter()
            .filter(|(name, ..)| name == app)
            .map(|(_, reason, n)| (reason.to_string(), *n))
            .collect()
    };
    let workers = status
        .apps
        .iter()
        .find(|s| s.name == app)
        .map(|s| s.workers.clone())
        .unwrap_or_default();
    Some(Description {
        app: app.to_string(),
        program: a.program.display().to_string(),
        args: mask_args(&c.args),
        cwd: c.cwd.display().to_string(),
        listen: a.listen.to_string(),
        instances: a.instances_file.clone(),
        scaled: a.scaled.clone(),
        settings,
        env: c.env.iter().map(|(k, v)| (k.clone(), mask(k, v))).collect(),
        workers,
        restarts: by_app(&view.restarts_by),
        hangs: by_app(&view.hangs_by),
        recent_exits: a
            .exits
            .iter()
            .rev()
            .map(|e| ExitRecord {
                ago_secs: now.saturating_duration_since(e.at).as_secs_f64(),
                slot: e.slot,
                pid: e.pid.as_raw() as u32,
                generation: e.generation,
                reason: e.reason.to_string(),
                code: e.code,
                signal: e.signal.clone(),
            })
            .collect(),
        last_reload: status.supervisor.reload.last.clone(),
    })
}

/// `describe` for a terminal.
pub fn render(d: &Description) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "app {}", d.app);
    let _ = writeln!(out, "  program    {} {}", d.program, d.args.join(" "));
    let _ = writeln!(out, "  cwd        {}", d.cwd);
    let _ = writeln!(out, "  listen     {}", d.listen);
    let instances = match &d.scaled {
        Some(n) => format!("{n} (scaled by `heartalk scale`; file: {})", d.instances),
        None => d.instances.clone(),
    };
    let _ = writeln!(out, "  instances  {instances}");
    let _ = writeln!(out, "settings");
    for (k, v) in &d.settings {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Null => "off".into(),
            other => other.to_string(),
        };
        let _ = writeln!(out, "  {k:<22} {v}");
    }
    let _ = writeln!(
        out,
        "env ([apps.env]; secrets masked; the supervisor's environment is inherited too)"
    );
    if d.env.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (k, v) in &d.env {
        let _ = writeln!(out, "  {k}={v}");
    }
    let _ = writeln!(out, "workers");
    for w in &d.workers {
        let pid = w.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        let up = w.uptime_secs.map_or_else(|| "-".to_string(), duration);
        let _ = writeln!(
            out,
            "  slot {}  pid {pid}  {}  up {up}  restarts {} (unstable {})",
            w.slot, w.state, w.restarts, w.unstable_restarts
        );
    }
    let counts = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "restarts   {}", counts(&d.restarts));
    let _ = writeln!(out, "hangs      {}", counts(&d.hangs));
    let _ = writeln!(out, "recent exits (newest first)");
    if d.recent_exits.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for e in &d.recent_exits {
        let how = match (&e.signal, e.code) {
            (Some(sig), _) => format!(" ({sig})"),
            (None, Some(c)) => format!(" (code {c})"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} ago  slot {}  pid {}  gen {}  {}{how}",
            duration(e.ago_secs),
            e.slot,
            e.pid,
            e.generation,
            e.reason
        );
    }
    let reload = match &d.last_reload {
        None => "none yet".to_string(),
        Some(r) => match &r.reason {
            Some(why) => format!("generation {} {} ({why})", r.generation, r.outcome),
            None => format!("generation {} {}", r.generation, r.outcome),
        },
    };
    let _ = writeln!(out, "last reload  {reload}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_by_name_and_url_passwords_in_place() {
        assert_eq!(mask("JWT_SECRET", "s3cr3t"), MASK);
        assert_eq!(mask("byteplus_api_key", "ak-123"), MASK);
        assert_eq!(mask("HEARTALK_API_KEY", "k"), MASK);
        assert_eq!(mask("REDIS_PASSWORD", "pw"), MASK);
        assert_eq!(mask("GITHUBTOKEN", "t"), MASK);
        assert_eq!(mask("DB_PASS", "p"), MASK);
        assert_eq!(mask("MYSQL_PWD", "p"), MASK);
        assert_eq!(mask("PGPASSWORD", "p"), MASK);
        assert_eq!(mask("DATABASE_DSN", "x"), MASK);
        assert_eq!(mask("NODE_ENV", "production"), "production");
        assert_eq!(mask("PORT", "8001"), "8001");
        // A path whose name only contains KEY as part of a word.
        assert_eq!(
            mask("KEYWORDS_CONFIG", "/etc/heartalk/keywords.json"),
            "/etc/heartalk/keywords.json"
        );
        // An empty secret is shown as empty: nothing to hide, and it tells
        // the operator the variable is unset.
        assert_eq!(mask("JWT_SECRET", ""), "");
    }

    #[test]
    fn secrets_inside_values_are_masked() {
        let cases = [
            (
                "redis://:hunter2@redis:6379/0",
                "redis://:********@redis:6379/0",
            ),
            // An `@` in the query: masked through it (too much, never
            // too little), as the log masker does.
            (
                "https://user:pa:ss@api.example/x?y=@z",
                "https://user:********@z",
            ),
            ("redis://:p?w@h:6379", "redis://:********@h:6379"),
            ("redis://:p#w@h", "redis://:********@h"),
            ("redis://:pa/ss@h:6379", "redis://:********@h:6379"),
            // Separators of a list inside a password: the password ends
            // at the last `@` before the next URL, not at the `,` or `;`.
            ("redis://:pa,ss@h:6379", "redis://:********@h:6379"),
            ("redis://u:p;w@h", "redis://u:********@h"),
            (
                "redis://:a,b@h1;redis+unix://:c;d@h2",
                "redis://:********@h1;redis+unix://:********@h2",
            ),
            (
                "https://ghp_x@github.com/o/r",
                "https://********@github.com/o/r",
            ),
            (
                "redis://:p1@a:6379,redis://:p2@b:6379",
                "redis://:********@a:6379,redis://:********@b:6379",
            ),
            (
                "https://h/x?token=abc&page=2",
                "https://h/x?token=********&page=2",
            ),
            (
                "https://b.s3/k?X-Amz-Signature=deadbeef&X-Amz-Date=1",
                "https://b.s3/k?X-Amz-Signature=********&X-Amz-Date=1",
            ),
            (
                "jdbc:postgresql://db/app?user=u&password=p",
                "jdbc:postgresql://db/app?user=u&password=********",
            ),
            (
                "host=db user=u password=pw dbname=x",
                "host=db user=u password=******** dbname=x",
            ),
            // A secret's value runs to whitespace or `&`, not to `,` or `;`.
            ("pass=a,b", "pass=********"),
            ("password=p;w&page=2", "password=********&page=2"),
            ("a=1,token=t,x;y=2", "a=1,token=********"),
            ("redis://redis:6379", "redis://redis:6379"),
            ("https://h/p?q=1", "https://h/p?q=1"),
            ("plain value", "plain value"),
        ];
        for (value, want) in cases {
            assert_eq!(mask("SOME_URL", value), want, "{value}");
        }
        let args: Vec<String> = [
            "--api-key",
            "abc",
            "--token=xyz",
            "--port",
            "8001",
            "redis://:pw@h",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            mask_args(&args),
            [
                "--api-key",
                MASK,
                "--token=********",
                "--port",
                "8001",
                "redis://:********@h"
            ]
        );
    }

    #[test]
    fn the_rendering_names_every_part() {
        let d = Description {
            app: "heartalk".into(),
            program: "/usr/local/bin/heartalk-worker".into(),
            args: vec![],
            cwd: "/app".into(),
            listen: "0.0.0.0:8001".into(),
            instances: "2".into(),
            scaled: Some("4".into()),
            settings: [("kill_timeout".to_string(), Value::from("35s"))]
                .into_iter()
                .collect(),
            env: [("JWT_SECRET".to_string(), MASK.to_string())]
                .into_iter()
                .collect(),
            workers: vec![],
            restarts: [("crash".to_string(), 2)].into_iter().collect(),
            hangs: BTreeMap::new(),
            recent_exits: vec![ExitRecord {
                ago_secs: 65.0,
                slot: 1,
                pid: 42,
                generation: 1,
                reason: "crash".into(),
                code: None,
                signal: Some("SIGKILL".into()),
            }],
            last_reload: None,
        };
        let text = render(&d);
        for want in [
            "instances  4 (scaled by `heartalk scale`; file: 2)",
            "kill_timeout",
            "JWT_SECRET=********",
            "restarts   crash 2",
            "1m 5s ago  slot 1  pid 42  gen 1  crash (SIGKILL)",
            "last reload  none yet",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }
}
