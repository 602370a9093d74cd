//! Walks the span-carrying TOML tree into a [`Config`], collecting every error.
//!
//! serde stops at the first error, so instead of `#[derive(Deserialize)]`
//! the document is parsed with toml's recoverable, span-preserving parser
//! and each key is read by a small typed accessor that records problems in
//! [`Diagnostics`] and carries on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Diagnostics, closest};
use super::units::{parse_duration, parse_size};
use super::{
    App, Config, ConfigErrors, DEFAULT_PORT, Instances, LogSettings, SupervisorSettings, expand_env,
};

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["apps", "log", "supervisor"];
const SUPERVISOR_KEYS: &[&str] = &["control_socket", "metrics_listen", "service_metrics"];
const LOG_KEYS: &[&str] = &[
    "dir",
    "max_size",
    "max_files",
    "stdout",
    "max_line",
    "rotate_interval",
    "queue",
    "compress",
];
const APP_KEYS: &[&str] = &[
    "name",
    "script",
    "args",
    "instances",
    "listen",
    "cwd",
    "env",
    "max_memory",
    "max_memory_hard",
    "memory_check_interval",
    "memory_strikes",
    "min_uptime",
    "max_restarts",
    "restart_delay",
    "restart_delay_max",
    "listen_timeout",
    "kill_timeout",
    "max_surge",
    "watchdog",
];

const SIZE_HINT: &str =
    r#"write a size such as "512M" or "1G" (binary units), or an integer number of bytes"#;
const DURATION_HINT: &str =
    r#"write a duration such as "500ms", "10s" or "1m 30s", or an integer number of milliseconds"#;

pub(super) fn read(
    text: &str,
    path: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut d = Diagnostics::new(text);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        let span = e.span().unwrap_or(0..0);
        d.error(
            span,
            format!("TOML syntax: {}", e.message().trim()),
            Some("see https://toml.io for the syntax; strings need quotes".into()),
        );
    }
    if d.has_errors() {
        // A damaged tree yields confusing follow-up errors; report syntax only.
        return d.into_result(placeholder(path), path);
    }
    let top = doc.get_ref();
    check_keys(&mut d, top, TOP_KEYS, "top level");

    let log = read_log(&mut d, top.get("log"), base);
    let supervisor = read_supervisor(&mut d, top.get("supervisor"), base);
    let mut apps = Vec::new();
    match top.get("apps") {
        None => d.error(
            0..0,
            "no `[[apps]]` section: nothing to run",
            Some("add `[[apps]]` with at least `name = \"heartalk\"`".into()),
        ),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                for item in items {
                    match item.get_ref() {
                        DeValue::Table(t) => apps.push(read_app(&mut d, t, item.span(), base, env)),
                        other => type_error(&mut d, item.span(), "apps entry", "a table", other),
                    }
                }
            }
            DeValue::Array(_) => d.error(v.span(), "`apps` is empty: nothing to run", None),
            other => type_error(
                &mut d,
                v.span(),
                "apps",
                "an array of tables (`[[apps]]`)",
                other,
            ),
        },
    }
    apply_port_override(&mut d, &mut apps, env);
    check_fleet(&mut d, &apps);
    let config = Config {
        path: path.to_path_buf(),
        supervisor,
        log,
        apps: apps.into_iter().map(|(app, _)| app).collect(),
    };
    d.into_result(config, path)
}

fn placeholder(path: &Path) -> Config {
    Config {
        path: path.to_path_buf(),
        supervisor: SupervisorSettings::default(),
        log: default_log(Path::new(".")),
        apps: Vec::new(),
    }
}

fn default_log(base: &Path) -> LogSettings {
    LogSettings {
        dir: base.join("logs"),
        max_size: 10 << 20,
        max_files: 10,
        stdout: None,
        max_line: 64 << 10,
        rotate_interval: None,
        queue: 65_536,
        compress: true,
    }
}

fn check_keys(d: &mut Diagnostics, table: &DeTable, known: &[&str], section: &str) {
    for (key, _) in table.iter() {
        let name: &str = key.get_ref();
        if !known.contains(&name) {
            let hint = match closest(name, known) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("known keys here: {}", known.join(", ")),
            };
            d.error(
                key.span(),
                format!("unknown key `{name}` in {section}"),
                Some(hint),
            );
        }
    }
}

fn type_error(d: &mut Diagnostics, span: Range<usize>, key: &str, want: &str, got: &DeValue) {
    d.error(
        span,
        format!("`{key}` must be {want}, found {}", got.type_str()),
        None,
    );
}

fn read_log(d: &mut Diagnostics, v: Option<&Value>, base: &Path) -> LogSettings {
    let mut log = default_log(base);
    let Some(v) = v else { return log };
    let DeValue::Table(t) = v.get_ref() else {
        type_error(d, v.span(), "log", "a table (`[log]`)", v.get_ref());
        return log;
    };
    check_keys(d, t, LOG_KEYS, "[log]");
    if let Some(s) = string(d, t, "dir") {
        log.dir = base.join(s);
    }
    if let Some(n) = size(d, t, "max_size") {
        log.max_size = n;
    }
    if let Some(n) = integer(d, t, "max_files", 0, 10_000) {
        log.max_files = n as u32;
    }
    log.stdout = boolean(d, t, "stdout");
    if let Some(n) = size(d, t, "max_line") {
        if n < 256 {
            d.error(
                t["max_line"].span(),
                "`max_line` must be at least 256 bytes",
                None,
            );
        } else {
            log.max_line = n as usize;
        }
    }
    log.rotate_interval = positive_duration(d, t, "rotate_interval");
    if let Some(n) = integer(d, t, "queue", 1, 100_000_000) {
        log.queue = n as usize;
    }
    if let Some(b) = boolean(d, t, "compress") {
        log.compress = b;
    }
    if log.max_size == 0 {
        if let Some(v) = t.get("max_size") {
            d.error(v.span(), "`max_size` must be larger than zero", None);
        }
    }
    log
}

fn read_supervisor(d: &mut Diagnostics, v: Option<&Value>, base: &Path) -> SupervisorSettings {
    let mut out = SupervisorSettings::default();
    let Some(v) = v else { return out };
    let DeValue::Table(t) = v.get_ref() else {
        type_error(
            d,
            v.span(),
            "supervisor",
            "a table (`[supervisor]`)",
            v.get_ref(),
        );
        return out;
    };
    check_keys(d, t, SUPERVISOR_KEYS, "[supervisor]");
    out.control_socket = string(d, t, "control_socket").map(|s| base.join(s));
    if let Some(v) = t.get("metrics_listen") {
        out.metrics_listen = listen(d, v);
    }
    if let Some(b) = boolean(d, t, "service_metrics") {
        out.service_metrics = b;
    }
    out
}

fn read_app(
    d: &mut Diagnostics,
    t: &DeTable,
    span: Range<usize>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> (App, Range<usize>) {
    check_keys(d, t, APP_KEYS, "[[apps]]");
    let name = match string(d, t, "name") {
        Some(n) if !n.trim().is_empty() => n,
        Some(_) => {
            d.error(t["name"].span(), "`name` must not be empty", None);
            String::new()
        }
        None => {
            if !t.contains_key("name") {
                d.error(
                    span.clone(),
                    "an app needs a `name`",
                    Some("add `name = \"heartalk\"`".into()),
                );
            }
            String::new()
        }
    };
    let mut app = App::with_defaults(name, base.to_path_buf());
    if let Some(s) = string(d, t, "script") {
        if s.is_empty() {
            d.error(t["script"].span(), "`script` must not be empty", None);
        }
        app.script = s;
    }
    if let Some(v) = t.get("args") {
        app.args = string_array(d, v, "args");
    }
    if let Some(v) = t.get("instances") {
        if let Some(i) = instances(d, v) {
            app.instances = i;
        }
    }
    if let Some(v) = t.get("listen") {
        if let Some(a) = listen(d, v) {
            app.listen = a;
        }
    }
    if let Some(s) = string(d, t, "cwd") {
        app.cwd = base.join(s);
    }
    if let Some(v) = t.get("env") {
        read_env(d, v, env, &mut app);
    }
    app.max_memory = size(d, t, "max_memory");
    app.max_memory_hard = size(d, t, "max_memory_hard");
    set(
        &mut app.memory_check_interval,
        positive_duration(d, t, "memory_check_interval"),
    );
    set(
        &mut app.memory_strikes,
        integer(d, t, "memory_strikes", 1, 100).map(|n| n as u32),
    );
    set(&mut app.min_uptime, duration(d, t, "min_uptime"));
    set(
        &mut app.max_restarts,
        integer(d, t, "max_restarts", 0, 1_000_000).map(|n| n as u32),
    );
    set(&mut app.restart_delay, duration(d, t, "restart_delay"));
    set(
        &mut app.restart_delay_max,
        duration(d, t, "restart_delay_max"),
    );
    set(
        &mut app.listen_timeout,
        positive_duration(d, t, "listen_timeout"),
    );
    set(&mut app.kill_timeout, duration(d, t, "kill_timeout"));
    set(
        &mut app.max_surge,
        integer(d, t, "max_surge", 1, 1024).map(|n| n as u32),
    );
    if let Some(w) = duration(d, t, "watchdog") {
        if w.is_zero() {
            app.watchdog = None;
        } else if w < super::MIN_WATCHDOG {
            d.error(
                t["watchdog"].span(),
                format!(
                    "`watchdog` = {w:?} is shorter than {:?}",
                    super::MIN_WATCHDOG
                ),
                Some(
                    "workers ping at half the interval; write \"0\" to turn the watchdog off"
                        .into(),
                ),
            );
        } else {
            app.watchdog = Some(w);
        }
    }

    if let (Some(soft), Some(hard)) = (app.max_memory, app.max_memory_hard) {
        if hard <= soft {
            d.error(
                t["max_memory_hard"].span(),
                "`max_memory_hard` must be larger than `max_memory`",
                Some("the soft limit replaces a worker gracefully; the hard one kills it".into()),
            );
        }
    }
    if app.restart_delay > app.restart_delay_max {
        let span = t
            .get("restart_delay")
            .or_else(|| t.get("restart_delay_max"))
            .map_or(span.clone(), |v| v.span());
        d.error(
            span,
            "`restart_delay` (backoff base) is larger than `restart_delay_max` (backoff cap)",
            None,
        );
    }
    (app, span)
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn read_env(d: &mut Diagnostics, v: &Value, env: &dyn Fn(&str) -> Option<String>, app: &mut App) {
    let DeValue::Table(t) = v.get_ref() else {
        type_error(d, v.span(), "env", "a table (`[apps.env]`)", v.get_ref());
        return;
    };
    for (key, value) in t.iter() {
        let name: &str = key.get_ref();
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            d.error(
                key.span(),
                format!("`{name}` is not a valid environment variable name"),
                None,
            );
            continue;
        }
        if crate::activation::env::ALL.contains(&name) {
            d.error(
                key.span(),
                format!("`{name}` is set by heartalk for every worker and cannot be overridden"),
                Some(
                    "remove it from `[apps.env]`; the worker contract variables are reserved"
                        .into(),
                ),
            );
            continue;
        }
        let raw = match value.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => i.as_str().to_string(),
            DeValue::Float(f) => f.as_str().to_string(),
            DeValue::Boolean(b) => b.to_string(),
            other => {
                type_error(d, value.span(), name, "a string, number or boolean", other);
                continue;
            }
        };
        match expand_env(&raw, env) {
            Ok(s) => {
                app.env.insert(name.to_string(), s);
            }
            Err(msg) => d.error(
                value.span(),
                format!("env `{name}`: {msg}"),
                Some(
                    "export it before starting heartalk, or give a default: `${VAR:-value}`".into(),
                ),
            ),
        }
    }
}

fn string(d: &mut Diagnostics, t: &DeTable, key: &str) -> Option<String> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        other => {
            type_error(d, v.span(), key, "a string", other);
            None
        }
    }
}

fn boolean(d: &mut Diagnostics, t: &DeTable, key: &str) -> Option<bool> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        other => {
            type_error(d, v.span(), key, "true or false", other);
            None
        }
    }
}

fn int_value(d: &mut Diagnostics, v: &Value, key: &str) -> Option<i64> {
    let DeValue::Integer(i) = v.get_ref() else {
        return None;
    };
    match i64::from_str_radix(i.as_str(), i.radix()) {
        Ok(n) => Some(n),
        Err(_) => {
            d.error(v.span(), format!("`{key}` is out of range"), None);
            None
        }
    }
}

fn integer(d: &mut Diagnostics, t: &DeTable, key: &str, min: i64, max: i64) -> Option<i64> {
    let v = t.get(key)?;
    if !matches!(v.get_ref(), DeValue::Integer(_)) {
        type_error(d, v.span(), key, "an integer", v.get_ref());
        return None;
    }
    let n = int_value(d, v, key)?;
    if n < min || n > max {
        d.error(
            v.span(),
            format!("`{key}` = {n} is out of range {min}..={max}"),
            None,
        );
        return None;
    }
    Some(n)
}

fn size(d: &mut Diagnostics, t: &DeTable, key: &str) -> Option<u64> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::String(s) => match parse_size(s) {
            Ok(n) => Some(n),
            Err(msg) => {
                d.error(v.span(), format!("`{key}`: {msg}"), Some(SIZE_HINT.into()));
                None
            }
        },
        DeValue::Integer(_) => match int_value(d, v, key)? {
            n if n >= 0 => Some(n as u64),
            n => {
                d.error(
                    v.span(),
                    format!("`{key}` = {n} is negative"),
                    Some(SIZE_HINT.into()),
                );
                None
            }
        },
        other => {
            d.error(
                v.span(),
                format!("`{key}` must be a size, found {}", other.type_str()),
                Some(SIZE_HINT.into()),
            );
            None
        }
    }
}

fn duration(d: &mut Diagnostics, t: &DeTable, key: &str) -> Option<Duration> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::String(s) => match parse_duration(s) {
            Ok(n) => Some(n),
            Err(msg) => {
                d.error(
                    v.span(),
                    format!("`{key}`: {msg}"),
                    Some(DURATION_HINT.into()),
                );
                None
            }
        },
        DeValue::Integer(_) => match int_value(d, v, key)? {
            n if n >= 0 => Some(Duration::from_millis(n as u64)),
            n => {
                d.error(
                    v.span(),
                    format!("`{key}` = {n} is negative"),
                    Some(DURATION_HINT.into()),
                );
                None
            }
        },
        other => {
            d.error(
                v.span(),
                format!("`{key}` must be a duration, found {}", other.type_str()),
                Some(DURATION_HINT.into()),
            );
            None
        }
    }
}

fn positive_duration(d: &mut Diagnostics, t: &DeTable, key: &str) -> Option<Duration> {
    let value = duration(d, t, key)?;
    if value.is_zero() {
        d.error(
            t[key].span(),
            format!("`{key}` must be longer than zero"),
            Some(DURATION_HINT.into()),
        );
        return None;
    }
    Some(value)
}

fn string_array(d: &mut Diagnostics, v: &Value, key: &str) -> Vec<String> {
    match v.get_ref() {
        // PM2 accepts `args` as one string too; split it on whitespace.
        DeValue::String(s) => s.split_whitespace().map(str::to_string).collect(),
        DeValue::Array(items) => items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                other => {
                    type_error(d, item.span(), key, "an array of strings", other);
                    None
                }
            })
            .collect(),
        other => {
            type_error(d, v.span(), key, "an array of strings", other);
            Vec::new()
        }
    }
}

fn instances(d: &mut Diagnostics, v: &Value) -> Option<Instances> {
    const HINT: &str = r#"write a positive number of workers, or "max" for one per usable CPU"#;
    match v.get_ref() {
        DeValue::String(s) if s.as_ref() == "max" || s.as_ref() == "-1" => Some(Instances::Max),
        DeValue::Integer(_) => {
            let n = int_value(d, v, "instances")?;
            // PM2 treats -1 as "max"; 0 would run nothing.
            if n == -1 {
                return Some(Instances::Max);
            }
            match u32::try_from(n).ok().and_then(NonZeroU32::new) {
                Some(n) => Some(Instances::Count(n)),
                None => {
                    d.error(
                        v.span(),
                        format!("`instances` = {n}: at least one worker is needed"),
                        Some(HINT.into()),
                    );
                    None
                }
            }
        }
        other => {
            d.error(
                v.span(),
                format!(
                    "`instances` must be a number or \"max\", found {}",
                    describe(other)
                ),
                Some(HINT.into()),
            );
            None
        }
    }
}

fn describe(v: &DeValue) -> String {
    match v {
        DeValue::String(s) => format!("\"{s}\""),
        other => other.type_str().to_string(),
    }
}

fn listen(d: &mut Diagnostics, v: &Value) -> Option<SocketAddr> {
    const HINT: &str =
        r#"write "address:port" such as "0.0.0.0:8001" or "[::]:8001", or just a port number"#;
    let parsed = match v.get_ref() {
        DeValue::Integer(_) => int_value(d, v, "listen")
            .and_then(|n| u16::try_from(n).ok())
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
        DeValue::String(s) => s.parse::<SocketAddr>().ok().or_else(|| {
            s.parse::<u16>()
                .ok()
                .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        }),
        other => {
            type_error(d, v.span(), "listen", "\"address:port\"", other);
            return None;
        }
    };
    if parsed.is_none() {
        d.error(
            v.span(),
            format!(
                "`listen` = {} is not an address:port",
                describe(v.get_ref())
            ),
            Some(HINT.into()),
        );
    }
    parsed
}

/// `PORT` in the supervisor's environment moves the first app (the service),
/// as the Node.js service honoured `PORT`; other apps keep their `listen`.
fn apply_port_override(
    d: &mut Diagnostics,
    apps: &mut [(App, Range<usize>)],
    env: &dyn Fn(&str) -> Option<String>,
) {
    let Some(raw) = env("PORT") else { return };
    let Some((first, span)) = apps.first_mut() else {
        return;
    };
    match raw.trim().parse::<u16>() {
        Ok(port) => first.listen.set_port(port),
        Err(_) => d.error(
            span.clone(),
            format!("the PORT environment variable ({raw:?}) is not a port number"),
            Some(format!(
                "unset PORT or set it to a number such as {DEFAULT_PORT}"
            )),
        ),
    }
}

fn check_fleet(d: &mut Diagnostics, apps: &[(App, Range<usize>)]) {
    for (i, (app, span)) in apps.iter().enumerate() {
        for (other, _) in &apps[..i] {
            if !app.name.is_empty() && other.name == app.name {
                d.error(
                    span.clone(),
                    format!("app name `{}` is used twice", app.name),
                    None,
                );
            }
            if other.listen == app.listen && app.listen.port() != 0 {
                d.error(
                    span.clone(),
                    format!(
                        "apps `{}` and `{}` both listen on {}",
                        other.name, app.name, app.listen
                    ),
                    Some("give each app its own `listen` port".into()),
                );
            }
        }
    }
}
