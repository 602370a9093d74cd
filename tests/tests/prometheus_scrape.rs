//! The monitoring assets against a real Prometheus (`prometheus` on PATH)
//! scraping a real `heartalk run`: Prometheus runs the shipped
//! monitoring/prometheus.yml (hosts and intervals substituted) with the
//! shipped monitoring/alerts.yml. After a little load of every kind (chat,
//! self-consistency, legacy history, a stream, 404s, a rate-limited stream,
//! upstream errors and retries, a worker crash, a reload), every PromQL
//! expression of monitoring/grafana/dashboards/heartalk.json and of every
//! loaded alert rule runs without error through the HTTP API, every
//! dashboard query has data, every metric name they use exists, every rule
//! evaluates healthy, and InstanceDown goes pending for the dead target.

mod helper;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use heartalk_e2e::mock_backend::MockBackend;
use heartalk_e2e::redis_server::RedisServer;
use helper::*;
use serde_json::{Value, json};

/// A Prometheus server in a temp dir; killed and reaped on drop.
struct Prometheus {
    daemon: Daemon,
}

impl Prometheus {
    /// Writes `config` and `rules` (as `alerts.yml`, next to it) to a temp
    /// dir and starts Prometheus on `addr`; waits until it is ready.
    fn start(config: &str, rules: &str, addr: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"));
        Prometheus {
            daemon: Daemon::start("prometheus", &mut cmd, dir, addr, "/-/ready"),
        }
    }

    /// GET an API path; the parsed JSON body, whatever the status.
    fn api(&self, path_and_query: &str) -> Value {
        let r = http_get(self.daemon.addr, path_and_query, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        serde_json::from_str(&r.body).unwrap_or_else(|e| {
            panic!(
                "GET {path_and_query}: {} not JSON ({e}): {}",
                r.status, r.body
            )
        })
    }

    /// An instant query through `/api/v1/query`.
    fn query(&self, expr: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", urlencode(expr)))
    }

    /// The value of a one-sample instant vector, if there is one.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr);
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shipped monitoring/prometheus.yml for this test: the service, the
/// (dead) Alertmanager and Prometheus itself at local addresses, everything
/// every second. Each substituted value must be in the shipped file.
fn test_config(shipped: &str, service: SocketAddr, dead: SocketAddr, prom: SocketAddr) -> String {
    let mut config = shipped.to_string();
    for (from, to) in [
        ("heartalk:8001", service.to_string()),
        ("alertmanager:9093", dead.to_string()),
        ("localhost:9090", prom.to_string()),
    ] {
        assert!(
            config.contains(from),
            "monitoring/prometheus.yml no longer has {from}"
        );
        config = config.replace(from, &to);
    }
    let mut out = String::new();
    let mut intervals = 0;
    for line in config.lines() {
        let key = line.trim_start().split(':').next().unwrap_or("");
        if matches!(
            key,
            "scrape_interval" | "evaluation_interval" | "scrape_timeout"
        ) {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}{key}: 1s\n"));
            intervals += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(intervals >= 2, "no global intervals in prometheus.yml");
    out
}

/// Grafana's variables, replaced by what Grafana would send.
fn substitute_grafana(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${instance}", ".+")
        .replace("$instance", ".+");
    assert!(
        !e.contains('$'),
        "unknown Grafana variable in {expr:?}: teach substitute_grafana"
    );
    e
}

/// Every query of the dashboard as (where, PromQL): each panel target's
/// `expr` (rows' nested panels too), and the selector of each
/// `label_values(selector, label)` variable.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {:?} target without expr: {t}", p["title"]));
                let at = format!("panel {} {}", p["title"], t["refId"]);
                out.push((at, substitute_grafana(expr)));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(inner) = q
            .and_then(|q| q.strip_prefix("label_values("))
            .and_then(|q| q.rsplit_once(','))
            .map(|(sel, _)| sel)
        {
            out.push((format!("variable {}", v["name"]), substitute_grafana(inner)));
        }
    }
    out
}

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers and ranges that are not functions, aggregations,
/// keywords or grouping labels.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    let c: Vec<char> = expr.chars().collect();
    let skip_to = |mut i: usize, close: char| {
        // from an opening bracket to just after its `close`, over strings
        while i < c.len() && c[i] != close {
            if c[i] == '"' || c[i] == '\'' {
                let q = c[i];
                i += 1;
                while i < c.len() && c[i] != q {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '{' {
            i = skip_to(i, '}');
        } else if ch == '[' {
            i = skip_to(i, ']');
        } else if ch.is_ascii_digit() {
            // numbers, durations (5m), exponents (1e3)
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let ident: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let next = c.get(j).copied();
            let lower = ident.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if next == Some('(') {
                    i = skip_to(j, ')');
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || next == Some('(')
            {
                // a keyword, an aggregation or a function call
            } else {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_the_selected_series_only() {
    let expr = r#"histogram_quantile(0.95, sum by (instance, le) (rate(http_request_duration_seconds_bucket{route!~"/health|x{y}", job="a"}[5m]))) > 2
        and on (instance) sum without (pid) (process_resident_memory_bytes offset 1m) > 512 * 1024 * 1e3
        unless ignoring(slot) group_left(app) ai_circuit_state == bool 2 or vector(0) or up or ALERTS"#;
    let got: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        got,
        [
            "ALERTS",
            "ai_circuit_state",
            "http_request_duration_seconds_bucket",
            "process_resident_memory_bytes",
            "up"
        ]
    );
    let text = "# HELP a_seconds x\n# TYPE a_seconds histogram\nb_total{x=\"1\"} 3\nc 1\n";
    let names = exposition_names(text);
    for n in ["a_seconds_bucket", "a_seconds_count", "b_total", "c"] {
        assert!(names.contains(n), "{n} in {names:?}");
    }
}

#[test]
fn every_dashboard_and_alert_expression_runs_on_a_real_prometheus() {
    let ark = MockArk::start();
    let backend = MockBackend::start();
    // A real Redis, as the shipped stacks run one (`ai_redis_up` exists only
    // where REDIS_URL is set).
    let redis = RedisServer::start();
    let mut env = Service::live_env(&ark.base_url());
    env.extend([
        ("REDIS_URL", redis.url()),
        ("HEARTALK_BACKEND_URL", backend.base_url()),
        ("RATE_LIMIT_STREAM_MAX", "1".to_string()),
        ("UPSTREAM_MAX_RETRIES", "1".to_string()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut svc = Service::start(2, &env);
    let addr = svc.addr;

    let monitoring = repo().join("monitoring");
    let read = |p: &str| {
        std::fs::read_to_string(monitoring.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let rules_text = read("alerts.yml");
    let prom_addr = free_addr();
    let config = test_config(&read("prometheus.yml"), addr, free_addr(), prom_addr);
    let prom = Prometheus::start(&config, &rules_text, prom_addr);

    // -- load: one of everything the dashboard shows
    let token = user_token();
    let chat = |path: &str, body: Value| post_json(addr, path, Some(&token), &body);
    let openai = |text: &str| json!({"messages": [{"role": "user", "content": text}]});
    let r = chat("/api/v1/chat/generate", openai("你好"));
    assert_eq!(r.status, 200, "{}", r.body);
    // self-consistency on the work-assistant endpoint
    let r = chat(
        "/api/v1/chat/generate",
        openai("如何分析项目的风险和机会？"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["reasoning"]["type"], "self-consistency");
    // legacy body: history from the backend
    let r = chat(
        "/api/v1/chat/generate",
        json!({"conversation_id": "42", "message": "聊聊天气", "user_id": "u1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(backend.history_calls() >= 1);
    let r = chat("/api/v1/chat/stream", openai("你好，讲个故事"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sse_json(&r.body).last().unwrap()["type"], "complete");
    // RATE_LIMIT_STREAM_MAX=1: the second stream is refused
    let r = chat("/api/v1/chat/stream", openai("你好，再讲一个"));
    assert_eq!(r.status, 429, "{}", r.body);
    for _ in 0..3 {
        let r = http_get(addr, "/no-such-page", DEADLINE).unwrap();
        assert_eq!(r.status, 404);
    }
    // a 5xx, retried once (UPSTREAM_MAX_RETRIES=1), then reported
    ark.push(Behavior::server_error());
    ark.push(Behavior::server_error());
    let r = chat("/api/v1/chat/generate", openai("你好，这次会失败"));
    assert_eq!(r.status, 502, "{}", r.body);
    ark.push(Behavior::quota_exceeded());
    let r = chat("/api/v1/chat/generate", openai("你好，额度用完了"));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["code"], "UPSTREAM_RATE_LIMITED");
    // A worker killed without warning loses what it counted since the
    // supervisor last scraped it: a scrape now keeps the load's numbers.
    let load_total = |text: &str| -> f64 {
        samples_of(text, "http_requests_total", "{")
            .filter(|(series, _)| !series.contains("route=\"/metrics\""))
            .map(|(_, v)| v)
            .sum()
    };
    let before = http_get(addr, "/metrics", DEADLINE).unwrap().body;
    assert_eq!(
        load_total(&before),
        10.0,
        "the load is not counted:\n{before}"
    );
    // a crash restart and a reload for the supervisor's families
    let first: Vec<i32> = svc.sup.spawned_pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    svc.sup.wait_event("worker_ready", |e| {
        !first.contains(&(e["pid"].as_i64().unwrap_or(0) as i32))
    });
    svc.sup.signal(nix::sys::signal::Signal::SIGHUP);
    svc.sup.wait_event("reload_committed", |_| true);

    // -- wait until Prometheus has the final numbers in two scrapes
    let exposition = http_get(addr, "/metrics", DEADLINE).unwrap().body;
    let served = load_total(&exposition);
    assert_eq!(served, 10.0, "counts went missing:\n{exposition}");
    let total = r#"sum(http_requests_total{job="heartalk", route!="/metrics"})"#;
    wait_for("prometheus to scrape the load", DEADLINE, || {
        (prom.scalar(total)? >= served).then_some(())
    });
    let last = r#"timestamp(up{job="heartalk"})"#;
    let seen = prom.scalar(last).expect("heartalk scraped");
    wait_for("one more scrape", DEADLINE, || {
        (prom.scalar(last)? > seen).then_some(())
    });

    // -- every rule of alerts.yml is loaded and evaluates without error
    let declared = rules_text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    let rules: Vec<Value> = wait_for("every rule evaluated", DEADLINE, || {
        let v = prom.api("/api/v1/rules");
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        for r in &rules {
            assert!(
                r["health"] != "err",
                "rule {} fails on real data: {}",
                r["name"],
                r["lastError"]
            );
        }
        (rules.len() == declared && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    });
    // the dead "alertmanager" target is seen down by the shipped InstanceDown
    wait_for("InstanceDown pending for the dead target", DEADLINE, || {
        let alerts = prom.api("/api/v1/alerts");
        let alerts = alerts["data"]["alerts"].as_array()?.clone();
        let down: Vec<&Value> = alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == "InstanceDown")
            .collect();
        assert!(
            down.iter().all(|a| a["labels"]["job"] == "alertmanager"),
            "live targets reported down: {down:?}"
        );
        (!down.is_empty()).then_some(())
    });

    // -- every expression runs; dashboard queries have data; names exist
    let dash: Value =
        serde_json::from_str(&read("grafana/dashboards/heartalk.json")).expect("dashboard JSON");
    let dashboard = dashboard_queries(&dash);
    assert!(
        dashboard.len() >= 20,
        "too few dashboard queries: {dashboard:?}"
    );
    let alerting: Vec<(String, String)> = rules
        .iter()
        .map(|r| {
            let at = format!("rule {} ({})", r["name"], r["labels"]["severity"]);
            (at, r["query"].as_str().unwrap().to_string())
        })
        .collect();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (is_dashboard, (at, expr)) in dashboard
        .iter()
        .map(|q| (true, q))
        .chain(alerting.iter().map(|q| (false, q)))
    {
        used.extend(metric_names(expr));
        let v = prom.query(expr);
        if v["status"] != "success" || v.get("error").is_some() {
            problems.push(format!("{at}: {expr}\n    -> {v}"));
        } else if is_dashboard && v["data"]["result"].as_array().is_some_and(Vec::is_empty) {
            problems.push(format!("{at}: no data after the load: {expr}"));
        }
    }

    let mut known = exposition_names(&exposition);
    let prom_metrics = http_get(prom_addr, "/metrics", DEADLINE).unwrap().body;
    known.extend(
        exposition_names(&prom_metrics)
            .into_iter()
            .filter(|n| n.starts_with("prometheus_")),
    );
    known.extend(["up", "ALERTS", "ALERTS_FOR_STATE"].map(String::from));
    let missing: Vec<&String> = used.iter().filter(|n| !known.contains(*n)).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "metric names used by the dashboard or alerts.yml but exposed by neither the service nor Prometheus: {missing:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) with {} dashboard and {} rule expressions:\n{}",
        problems.len(),
        dashboard.len(),
        alerting.len(),
        problems.join("\n")
    );
}
