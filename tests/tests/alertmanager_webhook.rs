//! monitoring/alertmanager.yml in a real Alertmanager (Debian's
//! `prometheus-alertmanager`, or `alertmanager` on PATH), started through
//! monitoring/alertmanager-entrypoint.sh exactly as the compose stack does:
//! the webhook URL comes from ALERT_WEBHOOK_URL, a critical alert reaches
//! that URL (a receiver in this test) through the `webhook-critical` route,
//! and the inhibition rules hold: a critical alert mutes the warning of the
//! same alert on the same instance (not on another instance), and
//! InstanceDown mutes every other alert of its instance.

mod helper;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helper::*;
use serde_json::{Value, json};

/// An HTTP server that answers 200 to everything and keeps the bodies.
struct Webhook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<(String, String)>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let kept = kept.clone();
                std::thread::spawn(move || serve(conn, &kept));
            }
        });
        Webhook { addr, bodies }
    }

    /// (request target, body) of every request so far.
    fn received(&self) -> Vec<(String, Value)> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(target, body)| {
                let v = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("webhook body not JSON ({e}): {body}"));
                (target.clone(), v)
            })
            .collect()
    }
}

/// Keep-alive HTTP/1.1: one request after another on the connection.
fn serve(conn: TcpStream, kept: &Mutex<Vec<(String, String)>>) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        kept.lock()
            .unwrap()
            .push((target, String::from_utf8_lossy(&body).into_owned()));
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        if reader.get_mut().write_all(answer).is_err() {
            return;
        }
    }
}

/// Alertmanager started by the shipped entrypoint; killed and reaped on drop.
struct Alertmanager {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start(webhook_url: &str) -> Alertmanager {
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
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new("sh")
            .arg(monitoring.join("alertmanager-entrypoint.sh"))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // no gossip port: a single instance, and parallel tests
            .arg("--cluster.listen-address=")
            .env("ALERT_WEBHOOK_URL", webhook_url)
            .env("ALERTMANAGER_TEMPLATE", monitoring.join("alertmanager.yml"))
            .env("ALERTMANAGER_RENDERED", dir.path().join("alertmanager.yml"))
            .env("ALERTMANAGER_BIN", bin)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run sh");
        let mut am = Alertmanager { child, addr, dir };
        wait_for("alertmanager ready", DEADLINE, || {
            if let Some(status) = am.child.try_wait().unwrap() {
                panic!("alertmanager exited ({status}):\n{}", am.log());
            }
            let r = http_get(addr, "/-/ready", Duration::from_secs(2)).ok()?;
            (r.status == 200).then_some(())
        });
        am
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// Every alert Alertmanager holds, by `alertname/severity/instance`.
    fn alerts(&self) -> Vec<(String, Value)> {
        let r = http_get(self.addr, "/api/v2/alerts", DEADLINE).unwrap();
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

impl Drop for Alertmanager {
    fn drop(&mut self) {
        // `sh` exec'd Alertmanager: the child is Alertmanager itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let hook = Webhook::start();
    // `&` and `|` must survive the rendering untouched
    let url = format!("http://{}/hook?token=t0k&x=a|b", hook.addr);
    let am = Alertmanager::start(&url);

    let alerts = json!([
        alert("HighMemoryUsage", "critical", "a:8001"),
        alert("HighMemoryUsage", "warning", "a:8001"),
        alert("HighMemoryUsage", "warning", "b:8001"),
        alert("InstanceDown", "critical", "c:8001"),
        alert("WorkerNotOnline", "warning", "c:8001"),
        alert("UpstreamErrorRate", "critical", "c:8001"),
    ]);
    let r = post_json(am.addr, "/api/v2/alerts", None, &alerts);
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
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let all = am.alerts();
        let wrong: Vec<&(String, Value)> = all
            .iter()
            .filter(|(key, status)| inhibited(status) != want_muted(key))
            .collect();
        if all.len() == 6 && wrong.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "inhibition differs from alertmanager.yml's rules for {wrong:?} (all: {all:?})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Critical groups are sent after group_wait (10 s) to the env's URL.
    let sent = wait_for("critical notifications", Duration::from_secs(30), || {
        let got = hook.received();
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
