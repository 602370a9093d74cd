//! Unit tests of the schema: defaults, every error class with its line, env
//! expansion and the PORT override.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("/etc/heartalk/ecosystem.toml"), &no_env)
}

fn errors(text: &str) -> Vec<ConfigError> {
    parse(text).expect_err("config should be rejected").errors
}

#[test]
fn minimal_app_gets_defaults() {
    let c = parse("[[apps]]\nname = \"heartalk\"\n").unwrap();
    let app = &c.apps[0];
    assert_eq!(app.script, "heartalk-worker");
    assert_eq!(app.instances, Instances::Max);
    assert_eq!(app.listen, "0.0.0.0:8001".parse().unwrap());
    assert_eq!(app.cwd, Path::new("/etc/heartalk"));
    assert_eq!(app.memory_check_interval, Duration::from_secs(1));
    assert_eq!(c.log.dir, Path::new("/etc/heartalk/logs"));
}

#[test]
fn full_app_is_read() {
    let c = parse(
        r#"
[log]
dir = "/var/log/heartalk"
max_size = "1M"
max_files = 3
stdout = true

[[apps]]
name = "api"
script = "/usr/bin/heartalk-worker"
args = ["--flag", "x"]
instances = 4
listen = "127.0.0.1:9000"
cwd = "srv"
max_memory = "150M"
max_memory_hard = "1G"
memory_check_interval = "250ms"
memory_strikes = 3
min_uptime = "5s"
max_restarts = 4
restart_delay = 50
restart_delay_max = "2s"
listen_timeout = "3s"
kill_timeout = "1s"
[apps.env]
NODE_ENV = "production"
WORKERS = 4
"#,
    )
    .unwrap();
    let a = &c.apps[0];
    assert_eq!(a.args, ["--flag", "x"]);
    assert_eq!(a.instances, Instances::Count(NonZeroU32::new(4).unwrap()));
    assert_eq!(a.listen, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(a.cwd, Path::new("/etc/heartalk/srv"));
    assert_eq!(a.max_memory, Some(150 << 20));
    assert_eq!(a.max_memory_hard, Some(1 << 30));
    assert_eq!(a.memory_check_interval, Duration::from_millis(250));
    assert_eq!(a.memory_strikes, 3);
    assert_eq!(a.restart_delay, Duration::from_millis(50));
    assert_eq!(a.env["WORKERS"], "4");
    assert_eq!(c.log.max_size, 1 << 20);
    assert_eq!(c.log.dir, Path::new("/var/log/heartalk"));
    assert_eq!(c.log.stdout, Some(true));
}

#[test]
fn every_error_is_reported_with_its_line() {
    let errs = errors(
        r#"[[apps]]
name = "a"
instances = 0
max_memory = "12X"
kill_timeout = "soon"
colour = "blue"
max_restarts = "many"
"#,
    );
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7], "{errs:#?}");
    assert!(errs[0].message.contains("instances"));
    assert!(errs[1].message.contains("unknown size unit"));
    assert!(errs[2].message.contains("kill_timeout"));
    assert!(errs[3].message.contains("unknown key `colour`"));
    assert!(errs[4].message.contains("must be an integer"));
    assert!(errs.iter().all(|e| e.column >= 1));
}

#[test]
fn syntax_errors_carry_their_line() {
    let errs = errors("[[apps]]\nname = \"a\"\ninstances = = 2\n");
    assert_eq!(errs[0].line, 3, "{errs:#?}");
    assert!(errs[0].message.starts_with("TOML syntax"));
}

#[test]
fn unknown_key_suggests_the_close_one() {
    let errs = errors("[[apps]]\nname = \"a\"\nmax_memroy = \"1G\"\n");
    assert_eq!(errs[0].hint.as_deref(), Some("did you mean `max_memory`?"));
    let errs = errors("lgo = 1\n[[apps]]\nname = \"a\"\n");
    assert_eq!(errs[0].line, 1);
    assert!(errs[0].hint.as_deref().unwrap().contains("log"));
}

#[test]
fn semantic_errors() {
    assert!(
        errors("")
            .iter()
            .any(|e| e.message.contains("no `[[apps]]`"))
    );
    assert!(
        errors("[[apps]]\ninstances = 2\n")[0]
            .message
            .contains("needs a `name`")
    );
    let dup = errors("[[apps]]\nname = \"a\"\n[[apps]]\nname = \"a\"\nlisten = 9\n");
    assert!(dup[0].message.contains("used twice"), "{dup:#?}");
    assert_eq!(dup[0].line, 3);
    let clash = errors("[[apps]]\nname = \"a\"\n[[apps]]\nname = \"b\"\n");
    assert!(clash[0].message.contains("both listen on 0.0.0.0:8001"));
    let order = errors("[[apps]]\nname = \"a\"\nmax_memory = \"1G\"\nmax_memory_hard = \"500M\"\n");
    assert_eq!(order[0].line, 4);
    let backoff = errors("[[apps]]\nname = \"a\"\nrestart_delay = \"20s\"\n");
    assert!(backoff[0].message.contains("backoff cap"));
    assert!(
        errors("[[apps]]\nname = \"a\"\nlisten = \"nowhere\"\n")[0]
            .message
            .contains("not an address")
    );
    assert!(
        errors("[[apps]]\nname = \"a\"\ninstances = \"lots\"\n")[0]
            .message
            .contains("\"lots\"")
    );
    assert!(
        errors("[[apps]]\nname = \"a\"\nlisten_timeout = \"0s\"\n")[0]
            .message
            .contains("longer than zero")
    );
}

#[test]
fn instances_accept_pm2_spellings() {
    for text in ["\"max\"", "-1", "\"-1\""] {
        let c = parse(&format!("[[apps]]\nname = \"a\"\ninstances = {text}\n")).unwrap();
        assert_eq!(c.apps[0].instances, Instances::Max, "{text}");
    }
}

#[test]
fn env_values_expand_from_the_supervisor_environment() {
    let env = |k: &str| match k {
        "SECRET" => Some("s3cr3t".to_string()),
        "PORT" => Some("9100".to_string()),
        _ => None,
    };
    let text = "[[apps]]\nname = \"a\"\n[apps.env]\nJWT_SECRET = \"${SECRET}\"\nMODE = \"${MODE:-dev}\"\nPRICE = \"$$5\"\n";
    let c = Config::parse(text, Path::new("e.toml"), &env).unwrap();
    let a = &c.apps[0];
    assert_eq!(a.env["JWT_SECRET"], "s3cr3t");
    assert_eq!(a.env["MODE"], "dev");
    assert_eq!(a.env["PRICE"], "$5");
    assert_eq!(a.listen.port(), 9100, "PORT overrides the first app");

    let errs = errors("[[apps]]\nname = \"a\"\n[apps.env]\nK = \"${MISSING}\"\n");
    assert_eq!(errs[0].line, 4);
    assert!(errs[0].message.contains("`MISSING` is not set"));
}

#[test]
fn env_may_not_set_the_worker_contract_variables() {
    let errs = errors(
        "[[apps]]\nname = \"a\"\n[apps.env]\nMODE = \"x\"\nLISTEN_FDS = \"2\"\nHEARTALK_LIMITS_FD = 9\nNOTIFY_SOCKET = \"@n\"\n",
    );
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, [5, 6, 7], "{errs:#?}");
    assert!(errs[0].message.contains("`LISTEN_FDS`"), "{errs:#?}");
    assert!(
        errs.iter()
            .all(|e| e.message.contains("cannot be overridden"))
    );
    for name in crate::activation::env::ALL {
        let errs = errors(&format!(
            "[[apps]]\nname = \"a\"\n[apps.env]\n{name} = \"x\"\n"
        ));
        assert_eq!(errs.len(), 1, "{name}: {errs:#?}");
        assert_eq!(errs[0].line, 4, "{name}");
    }
}

#[test]
fn expand_env_rules() {
    let env = |k: &str| (k == "A").then(|| "1".to_string());
    assert_eq!(expand_env("x${A}y", &env).unwrap(), "x1y");
    assert_eq!(expand_env("$A", &env).unwrap(), "$A");
    assert_eq!(expand_env("${B:-d}", &env).unwrap(), "d");
    assert!(
        expand_env("${A", &env)
            .unwrap_err()
            .contains("unterminated")
    );
    assert!(
        expand_env("${A B}", &env)
            .unwrap_err()
            .contains("not a valid")
    );
}

#[test]
fn display_lists_file_line_column_and_hint() {
    let e = parse("[[apps]]\nname = \"a\"\nmax_memory = \"1Q\"\n").unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(
            "/etc/heartalk/ecosystem.toml:3:14: error: `max_memory`: unknown size unit `Q`"
        ),
        "{text}"
    );
    assert!(text.contains("\n  hint: write a size"));
}

#[test]
fn supervisor_table() {
    let c = parse("[supervisor]\ncontrol_socket = \"run/ctl.sock\"\nmetrics_listen = \"127.0.0.1:9464\"\nservice_metrics = false\n[[apps]]\nname = \"a\"\n").unwrap();
    assert_eq!(
        c.supervisor.control_socket.as_deref(),
        Some(Path::new("/etc/heartalk/run/ctl.sock"))
    );
    assert_eq!(
        c.supervisor.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert!(!c.supervisor.service_metrics);
    let d = parse("[[apps]]\nname = \"a\"\n").unwrap();
    assert!(d.supervisor.service_metrics, "on by default");
    let errs = errors("[supervisor]\ncontrol_sock = 1\n[[apps]]\nname = \"a\"\n");
    assert!(
        errs[0]
            .message
            .contains("unknown key `control_sock` in [supervisor]")
    );
}

/// The error reported on `line`, which must mention `needle`.
fn error_on(errs: &[ConfigError], line: usize, needle: &str) {
    assert!(
        errs.iter()
            .any(|e| e.line == line && e.message.contains(needle)),
        "no error on line {line} mentioning {needle:?}: {errs:#?}"
    );
}

#[test]
fn log_table_defaults_and_every_key() {
    let d = parse("[[apps]]\nname = \"a\"\n").unwrap().log;
    assert_eq!(d.max_size, 10 << 20);
    assert_eq!(d.max_files, 10);
    assert_eq!(d.stdout, None, "mirror only as PID 1");
    assert_eq!(d.max_line, 64 << 10);
    assert_eq!(d.rotate_interval, None);
    assert_eq!(d.queue, 65_536);
    assert!(d.compress);

    let c = parse(
        r#"
[log]
dir = "var/log"
max_size = 4096
max_files = 0
stdout = false
max_line = "1K"
rotate_interval = "1h"
queue = 10
compress = false

[[apps]]
name = "a"
"#,
    )
    .unwrap();
    let log = c.log;
    assert_eq!(log.dir, Path::new("/etc/heartalk/var/log"));
    assert_eq!(log.max_size, 4096);
    assert_eq!(log.max_files, 0, "0 keeps no rotated file");
    assert_eq!(log.stdout, Some(false));
    assert_eq!(log.max_line, 1024);
    assert_eq!(log.rotate_interval, Some(Duration::from_secs(3600)));
    assert_eq!(log.queue, 10);
    assert!(!log.compress);
    // the smallest line length allowed, and an integer duration in ms
    let c =
        parse("[log]\nmax_line = 256\nrotate_interval = 1500\n[[apps]]\nname = \"a\"\n").unwrap();
    assert_eq!(c.log.max_line, 256);
    assert_eq!(c.log.rotate_interval, Some(Duration::from_millis(1500)));
}

#[test]
fn log_errors_carry_their_line() {
    let errs = errors(
        r#"[log]
max_size = 0
max_files = -1
stdout = "yes"
max_line = 255
rotate_interval = "0s"
queue = 0
compress = 1
colour = true
dir = 7
[[apps]]
name = "a"
"#,
    );
    error_on(&errs, 2, "`max_size` must be larger than zero");
    error_on(&errs, 3, "`max_files` = -1 is out of range");
    error_on(&errs, 4, "`stdout` must be true or false");
    error_on(&errs, 5, "`max_line` must be at least 256 bytes");
    error_on(&errs, 6, "`rotate_interval` must be longer than zero");
    error_on(&errs, 7, "`queue` = 0 is out of range");
    error_on(&errs, 8, "`compress` must be true or false");
    error_on(&errs, 9, "unknown key `colour` in [log]");
    error_on(&errs, 10, "`dir`");
    assert_eq!(errs.len(), 9, "one error per bad line: {errs:#?}");

    let errs = errors(
        "[log]\nmax_size = \"10Q\"\nrotate_interval = \"soon\"\nqueue = 100000001\n[[apps]]\nname = \"a\"\n",
    );
    error_on(&errs, 2, "unknown size unit");
    error_on(&errs, 3, "`rotate_interval`");
    error_on(&errs, 4, "out of range 1..=100000000");
    assert_eq!(errs.len(), 3, "{errs:#?}");

    let errs = errors("log = 5\n[[apps]]\nname = \"a\"\n");
    error_on(&errs, 1, "`log` must be a table");
}

#[test]
fn max_surge_is_read_and_bounded() {
    let app = |extra: &str| format!("[[apps]]\nname = \"a\"\n{extra}\n");
    assert_eq!(parse(&app("")).unwrap().apps[0].max_surge, 1, "default");
    for n in [1, 4, 1024] {
        let c = parse(&app(&format!("max_surge = {n}"))).unwrap();
        assert_eq!(c.apps[0].max_surge, n);
    }
    for (value, needle) in [
        ("0", "`max_surge` = 0 is out of range 1..=1024"),
        ("1025", "`max_surge` = 1025 is out of range 1..=1024"),
        ("-2", "out of range"),
        ("\"2\"", "`max_surge` must be an integer"),
        ("1.5", "`max_surge` must be an integer"),
    ] {
        let errs = errors(&app(&format!("max_surge = {value}")));
        assert_eq!(errs.len(), 1, "{value}: {errs:#?}");
        error_on(&errs, 3, needle);
        assert!(errs[0].column >= 1);
    }
}

#[test]
fn watchdog_defaults_to_ten_seconds_and_zero_turns_it_off() {
    let app = |extra: &str| {
        parse(&format!("[[apps]]\nname = \"a\"\n{extra}"))
            .unwrap()
            .apps[0]
            .clone()
    };
    assert_eq!(app("").watchdog, Some(Duration::from_secs(10)));
    assert_eq!(
        app("watchdog = \"2s\"\n").watchdog,
        Some(Duration::from_secs(2))
    );
    assert_eq!(app("watchdog = \"0\"\n").watchdog, None);
    assert_eq!(app("watchdog = 0\n").watchdog, None);
    let errs = errors("[[apps]]\nname = \"a\"\nwatchdog = \"200ms\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, 3);
    assert!(errs[0].message.contains("watchdog"), "{}", errs[0].message);
    let errs = errors("[[apps]]\nname = \"a\"\nwatchdog = \"often\"\n");
    assert_eq!(errs[0].line, 3);
}
