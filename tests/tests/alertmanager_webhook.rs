//! monitoring/alertmanager.yml in a real Alertmanager (Debian's
//! `prometheus-alertmanager`, or `alertmanager` on PATH), started through
//! monitoring/alertmanager-entrypoint.sh exactly as the compose stack does:
//! the webhook URL comes from ALERT_WEBHOOK_URL (or from the secret file
//! ALERT_WEBHOOK_URL_FILE names), a critical alert reaches
//! that URL (a receiver in this test) through the `webhook-critical` route,
//! and the inhibition rules hold: a critical alert mutes the warning of the
//! same alert on the same instance (not on another instance), and
//! InstanceDown mutes every other alert of its instance.

mod helper;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use helper::*;
use serde_json::{Value, json};

/// (request target, JSON body) of every request `hook` has received.
fn received(hook: &StubHttp) -> Vec<(String, Value)> {
    hook.requests()
        .iter()
        .map(|r| (r.target.clone(), r.json()))
        .collect()
}

/// Alertmanager started by the shipped entrypoint; killed and reaped on drop.
struct Alertmanager {
    daemon: Daemon,
}

impl Alertmanager {
    /// `webhook` is the variable that gives the URL and its value:
    /// `ALERT_WEBHOOK_URL` and the URL, or `ALERT_WEBHOOK_URL_FILE` and a
    /// path.
    fn start(webhook: (&str, &str)) -> Alertmanager {
        let monitoring = repo().join("monitoring");
        let bin = ["alertmanager", "prometheus-alertmanager"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("no alertmanager on PATH (Debian's prometheus-alertmanager; scripts/deps.sh)");
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        // `sh` execs Alertmanager: the child is Alertmanager itself.
        let mut cmd = Command::new("sh");
        cmd.arg(monitoring.join("alertmanager-entrypoint.sh"))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // no gossip port: a single instance, and parallel tests
            .arg("--cluster.listen-address=")
            .env(webhook.0, webhook.1)
            .env("ALERTMANAGER_TEMPLATE", monitoring.join("alertmanager.yml"))
            .env("ALERTMANAGER_RENDERED", dir.path().join("alertmanager.yml"))
            .env("ALERTMANAGER_BIN", bin);
        Alertmanager {
            daemon: Daemon::start("alertmanager", &mut cmd, dir, addr, "/-/ready"),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.daemon.addr
    }

    fn log(&self) -> String {
        self.daemon.log()
    }

    /// Every alert Alertmanager holds, by `alertname/severity/instance`.
    fn alerts(&self) -> Vec<(String, Value)> {
        let r = http_get(self.addr(), "/api/v2/alerts", DEADLINE).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let l = &a["labels"];
                let key = format!(
                    "{}/{}/{}",
                    l["alertname"].as_str().unwrap_or(""),
                    l["severity"].as_str().unwrap_or(""),
                    l["instance"].as_str().unwrap_or("")
                );
                (key, a["status"].clone())
            })
            .collect()
    }
}

fn alert(name: &str, severity: &str, instance: &str) -> Value {
    json!({
        "labels": {"alertname": name, "severity": severity, "instance": instance, "job": "heartalk"},
        "annotations": {"summary": format!("{name} on {instance}")},
    })
}

#[test]
fn alerts_reach_the_webhook_from_the_environment_and_inhibitions_hold() {
    let hook = StubHttp::start(|_| Some(EMPTY_200.to_string()));
    // `&` and `|` must survive the rendering untouched
    let url = format!("http://{}/hook?token=t0k&x=a|b", hook.addr);
    let am = Alertmanager::start(("ALERT_WEBHOOK_URL", &url));

    let alerts = json!([
        alert("HighMemoryUsage", "critical", "a:8001"),
        alert("HighMemoryUsage", "warning", "a:8001"),
        alert("HighMemoryUsage", "warning", "b:8001"),
        alert("InstanceDown", "critical", "c:8001"),
        alert("WorkerNotOnline", "warning", "c:8001"),
        alert("UpstreamErrorRate", "critical", "c:8001"),
    ]);
    let r = post_json(am.addr(), "/api/v2/alerts", None, &alerts);
    assert_eq!(r.status, 200, "{}", r.body);

    let inhibited = |status: &Value| {
        status["state"] == "suppressed"
            && status["inhibitedBy"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    };
    let want_muted = |key: &str| {
        matches!(
            key,
            "HighMemoryUsage/warning/a:8001"
                | "WorkerNotOnline/warning/c:8001"
                | "UpstreamErrorRate/critical/c:8001"
        )
    };
    // Inhibitions show in the API at once; poll until the six alerts are in.
    wait_until(
        "the six alerts, inhibited by alertmanager.yml's rules",
        DEADLINE,
        || {
            let all = am.alerts();
            let wrong: Vec<&(String, Value)> = all
                .iter()
                .filter(|(key, status)| inhibited(status) != want_muted(key))
                .collect();
            if all.len() == 6 && wrong.is_empty() {
                return Ok(());
            }
            Err(format!(
                "inhibition differs from alertmanager.yml's rules for {wrong:?} (all: {all:?})"
            ))
        },
    );

    // Critical groups are sent after group_wait (10 s) to the env's URL.
    let sent = wait_for("critical notifications", Duration::from_secs(30), || {
        let got = received(&hook);
        let names: Vec<String> = got
            .iter()
            .flat_map(|(_, b)| b["alerts"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["labels"]["alertname"], a["labels"]["instance"]))
            .collect();
        let both = names.iter().any(|n| n == "\"HighMemoryUsage\"/\"a:8001\"")
            && names.iter().any(|n| n == "\"InstanceDown\"/\"c:8001\"");
        both.then_some(got)
    });
    for (target, body) in &sent {
        assert_eq!(target, "/hook?token=t0k&x=a|b", "{body}");
        assert_eq!(body["receiver"], "webhook-critical", "{body}");
        for a in body["alerts"].as_array().unwrap() {
            assert_eq!(a["labels"]["severity"], "critical", "{body}");
            assert_ne!(
                a["labels"]["alertname"], "UpstreamErrorRate",
                "an inhibited alert was sent: {body}"
            );
        }
    }
    assert!(
        am.log().contains("Completed loading of configuration file"),
        "{}",
        am.log()
    );
}

#[test]
fn alerts_reach_the_webhook_read_from_a_secret_file() {
    let hook = StubHttp::start(|_| Some(EMPTY_200.to_string()));
    let dir = tempfile::tempdir().unwrap();
    // As compose mounts it: a 0440 file (make-secrets.sh), ending in CRLF.
    let file = dir.path().join("alert_webhook_url");
    write_secret_file(
        &file,
        &format!("http://{}/from-file?token=f1le\r\n", hook.addr),
        0o440,
    );
    let am = Alertmanager::start(("ALERT_WEBHOOK_URL_FILE", file.to_str().unwrap()));

    let r = post_json(
        am.addr(),
        "/api/v2/alerts",
        None,
        &json!([alert("InstanceDown", "critical", "d:8001")]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Critical groups are sent after group_wait (10 s).
    let sent = wait_for("the notification", Duration::from_secs(30), || {
        let got = received(&hook);
        (!got.is_empty()).then_some(got)
    });
    let (target, body) = &sent[0];
    assert_eq!(target, "/from-file?token=f1le", "{body}");
    assert_eq!(body["receiver"], "webhook-critical", "{body}");
    assert_eq!(
        body["alerts"][0]["labels"]["alertname"], "InstanceDown",
        "{body}"
    );
}
