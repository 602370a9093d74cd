//! Unit tests of `metrics.rs`, kept beside it so the module reads as code.

use super::*;

/// The shape `metrics-exporter-prometheus` 0.18 renders.
const WORKER: &str = "\
# HELP http_requests_total Total HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 12
http_requests_total{method=\"POST\",route=\"/api/v1/chat\",status=\"200\"} 3

# HELP http_requests_in_flight Requests being served.
# TYPE http_requests_in_flight gauge
http_requests_in_flight 2

# HELP http_request_duration_seconds Request latency.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{route=\"/health\",le=\"0.005\"} 10
http_request_duration_seconds_bucket{route=\"/health\",le=\"0.01\"} 11
http_request_duration_seconds_bucket{route=\"/health\",le=\"0.1\"} 12
http_request_duration_seconds_bucket{route=\"/health\",le=\"1\"} 12
http_request_duration_seconds_bucket{route=\"/health\",le=\"10\"} 12
http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 12
http_request_duration_seconds_sum{route=\"/health\"} 0.0425
http_request_duration_seconds_count{route=\"/health\"} 12

# TYPE provider_latency_seconds summary
provider_latency_seconds{quantile=\"0.5\"} 0.8
provider_latency_seconds{quantile=\"0.99\"} 2.5
provider_latency_seconds_sum 4.5
provider_latency_seconds_count 3

";

fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(name, labels.iter().copied())
}

fn worker(app: &str, slot: usize) -> WorkerLabel {
    WorkerLabel {
        app: app.to_owned(),
        slot,
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

#[test]
fn parses_exporter_output() {
    let e = parse(WORKER).unwrap();
    let names: Vec<&str> = e.families.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "http_request_duration_seconds",
            "http_requests_in_flight",
            "http_requests_total",
            "provider_latency_seconds"
        ]
    );
    let requests = &e.families["http_requests_total"];
    assert_eq!(requests.kind, MetricType::Counter);
    assert_eq!(requests.help.as_deref(), Some("Total HTTP requests."));
    assert_eq!(requests.samples.len(), 2);
    let get = key(
        "http_requests_total",
        &[("method", "GET"), ("route", "/health"), ("status", "200")],
    );
    assert_eq!(e.get(&get), Some(12.0));

    let latency = &e.families["http_request_duration_seconds"];
    assert_eq!(latency.kind, MetricType::Histogram);
    assert_eq!(latency.samples.len(), 8);
    let inf = key(
        "http_request_duration_seconds_bucket",
        &[("le", "+Inf"), ("route", "/health")],
    );
    assert_eq!(e.get(&inf), Some(12.0));
    let sum = key("http_request_duration_seconds_sum", &[("route", "/health")]);
    assert_eq!(e.get(&sum), Some(0.0425));

    assert_eq!(
        e.families["http_requests_in_flight"].kind,
        MetricType::Gauge
    );
    let summary = &e.families["provider_latency_seconds"];
    assert_eq!(summary.kind, MetricType::Summary);
    assert_eq!(summary.help, None);
    assert_eq!(summary.samples.len(), 4);
}

#[test]
fn parses_escaped_label_values_and_help() {
    let text = "# HELP m A \\\\ backslash\\nand a newline.\n\
                # TYPE m gauge\n\
                m{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\",u=\"héllo}\",odd=\"\\t\"} 1\n";
    let e = parse(text).unwrap();
    let family = &e.families["m"];
    assert_eq!(
        family.help.as_deref(),
        Some("A \\ backslash\nand a newline.")
    );
    let k = &family.samples[0].key;
    assert_eq!(k.label("path"), Some("C:\\dir"));
    assert_eq!(k.label("quote"), Some("say \"hi\""));
    assert_eq!(k.label("nl"), Some("a\nb"));
    assert_eq!(k.label("u"), Some("héllo}"));
    assert_eq!(k.label("odd"), Some("\\t"));
    // And they survive a render → parse round trip.
    let text = Aggregator::new().render(&[(worker("a", 0), &e)], "");
    let again = parse(&text).unwrap();
    let k2 = &again.families["m"].samples[0].key;
    assert_eq!(k2.label("quote"), Some("say \"hi\""));
    assert_eq!(k2.label("nl"), Some("a\nb"));
    assert_eq!(k2.label("path"), Some("C:\\dir"));
    assert_eq!(
        again.families["m"].help.as_deref(),
        Some("A \\ backslash\nand a newline.")
    );
}

#[test]
fn parses_values_timestamps_and_spacing() {
    let text = "a +Inf\nb -Inf\nc NaN\nd 1e-3\ne 12 1712345678901\n\
                f{x=\"1\",} 2\n\tg { x = \"1\" }  3.5  \nh{} 4\r\n";
    let e = parse(text).unwrap();
    assert_eq!(e.get(&key("a", &[])), Some(f64::INFINITY));
    assert_eq!(e.get(&key("b", &[])), Some(f64::NEG_INFINITY));
    assert!(e.get(&key("c", &[])).unwrap().is_nan());
    assert_eq!(e.get(&key("d", &[])), Some(0.001));
    assert_eq!(
        e.families["e"].samples[0].timestamp_ms,
        Some(1_712_345_678_901)
    );
    assert_eq!(e.get(&key("f", &[("x", "1")])), Some(2.0));
    assert_eq!(e.get(&key("g", &[("x", "1")])), Some(3.5));
    assert_eq!(e.get(&key("h", &[])), Some(4.0));
    assert!(e.families.values().all(|f| f.kind == MetricType::Untyped));
}

#[test]
fn untyped_help_blank_lines_and_comments() {
    let text = "\n# a comment\n#\n# HELP loose Has help, no type.\nloose 1\n\n\
                # EOF\nlater 2\n# TYPE later counter\n";
    let e = parse(text).unwrap();
    assert_eq!(e.families["loose"].kind, MetricType::Untyped);
    assert_eq!(
        e.families["loose"].help.as_deref(),
        Some("Has help, no type.")
    );
    // A TYPE after the samples still types the family.
    assert_eq!(e.families["later"].kind, MetricType::Counter);
    assert_eq!(parse("").unwrap(), Exposition::default());
}

#[test]
fn repeated_series_keeps_the_last_sample() {
    let e = parse("# TYPE c counter\nc{a=\"1\"} 1\nc{a=\"1\"} 5\n").unwrap();
    assert_eq!(e.families["c"].samples.len(), 1);
    assert_eq!(e.get(&key("c", &[("a", "1")])), Some(5.0));
}

#[test]
fn malformed_lines_are_reported_with_their_number() {
    let cases: &[(&str, usize, ParseErrorKind)] = &[
        (
            "ok 1\n9bad 1\n",
            2,
            ParseErrorKind::InvalidName("9bad 1".into()),
        ),
        ("a-b 1", 1, ParseErrorKind::InvalidName("a-b 1".into())),
        ("ok 1\n\nnovalue\n", 3, ParseErrorKind::MissingValue),
        ("x one", 1, ParseErrorKind::BadValue("one".into())),
        ("x 1 soon", 1, ParseErrorKind::BadTimestamp("soon".into())),
        ("x 1 2 3", 1, ParseErrorKind::TrailingText("3".into())),
        (
            "x{a=\"1\" 1",
            1,
            ParseErrorKind::BadLabels("expected ',' or '}'"),
        ),
        (
            "x{a=\"1} 1",
            1,
            ParseErrorKind::BadLabels("unterminated label value"),
        ),
        (
            "x{a=1} 1",
            1,
            ParseErrorKind::BadLabels("expected a quoted label value"),
        ),
        (
            "x{=\"1\"} 1",
            1,
            ParseErrorKind::BadLabels("expected a label name"),
        ),
        (
            "x{a",
            1,
            ParseErrorKind::BadLabels("expected '=' after a label name"),
        ),
        (
            "x{a=\"1\",a=\"2\"} 1",
            1,
            ParseErrorKind::DuplicateLabel("a".into()),
        ),
        ("# TYPE x\n", 1, ParseErrorKind::MissingType),
        ("# TYPE\n", 1, ParseErrorKind::MissingName("TYPE")),
        (
            "# TYPE x countr\n",
            1,
            ParseErrorKind::UnknownType("countr".into()),
        ),
        (
            "# HELP 1x help\n",
            1,
            ParseErrorKind::InvalidName("1x".into()),
        ),
        (
            "# TYPE x counter\n# TYPE x gauge\n",
            2,
            ParseErrorKind::ConflictingType {
                name: "x".into(),
                old: MetricType::Counter,
                new: MetricType::Gauge,
            },
        ),
    ];
    for (text, line, kind) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(
            (err.line, &err.kind),
            (*line, kind),
            "input {text:?} gave {err}"
        );
    }
    let err = parse("ok 1\nbad line here\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.to_string().starts_with("metrics exposition line 2: "));
}

#[test]
fn sums_two_workers_series_by_series() {
    let a = parse(WORKER).unwrap();
    let b = parse(
        "# TYPE http_requests_total counter\n\
         http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 30\n\
         http_requests_total{method=\"GET\",route=\"/ready\",status=\"200\"} 1\n\
         # TYPE http_request_duration_seconds histogram\n\
         http_request_duration_seconds_bucket{route=\"/health\",le=\"0.005\"} 1\n\
         http_request_duration_seconds_bucket{route=\"/health\",le=\"0.01\"} 2\n\
         http_request_duration_seconds_bucket{route=\"/health\",le=\"0.1\"} 3\n\
         http_request_duration_seconds_bucket{route=\"/health\",le=\"1\"} 3\n\
         http_request_duration_seconds_bucket{route=\"/health\",le=\"10\"} 3\n\
         http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 3\n\
         http_request_duration_seconds_sum{route=\"/health\"} 0.0075\n\
         http_request_duration_seconds_count{route=\"/health\"} 3\n\
         # TYPE provider_latency_seconds summary\n\
         provider_latency_seconds{quantile=\"0.5\"} 0.1\n\
         provider_latency_seconds_sum 0.5\n\
         provider_latency_seconds_count 2\n",
    )
    .unwrap();
    let text = Aggregator::new().render(&[(worker("api", 0), &a), (worker("api", 1), &b)], "");
    let fleet = parse(&text).unwrap();
    let get = |name: &str, labels: &[(&str, &str)]| fleet.get(&key(name, labels));
    let health = [("method", "GET"), ("route", "/health"), ("status", "200")];
    assert_eq!(get("http_requests_total", &health), Some(42.0));
    let ready = [("method", "GET"), ("route", "/ready"), ("status", "200")];
    assert_eq!(get("http_requests_total", &ready), Some(1.0));
    let bucket = "http_request_duration_seconds_bucket";
    assert_eq!(
        get(bucket, &[("route", "/health"), ("le", "0.005")]),
        Some(11.0)
    );
    assert_eq!(
        get(bucket, &[("route", "/health"), ("le", "+Inf")]),
        Some(15.0)
    );
    let route = [("route", "/health")];
    assert_eq!(get("http_request_duration_seconds_sum", &route), Some(0.05));
    assert_eq!(
        get("http_request_duration_seconds_count", &route),
        Some(15.0)
    );
    assert_eq!(get("provider_latency_seconds_sum", &[]), Some(5.0));
    assert_eq!(get("provider_latency_seconds_count", &[]), Some(5.0));
    // Summary quantiles cannot be summed: gone, but the family stays.
    assert_eq!(
        fleet.families["provider_latency_seconds"].kind,
        MetricType::Summary
    );
    assert!(!text.contains("quantile"));
    // Counters carry no worker labels.
    assert!(!text.contains("http_requests_total{app="));
}

#[test]
fn gauges_and_untyped_are_labelled_per_worker() {
    let a = parse("# TYPE g gauge\ng 2\ng{app=\"own\"} 7\nraw{k=\"v\"} 1\n").unwrap();
    let b = parse("# TYPE g gauge\ng 5\n").unwrap();
    let text = Aggregator::new().render(&[(worker("api", 0), &a), (worker("api", 3), &b)], "");
    assert_eq!(
        lines(&text),
        [
            "# TYPE g gauge",
            "g{app=\"api\",slot=\"0\"} 2",
            "g{app=\"api\",slot=\"3\"} 5",
            "g{app=\"own\",slot=\"0\"} 7",
            "# TYPE raw untyped",
            "raw{app=\"api\",k=\"v\",slot=\"0\"} 1",
        ]
    );
}

#[test]
fn retired_totals_outlive_the_worker() {
    let old = parse(WORKER).unwrap();
    let new = parse(
        "# TYPE http_requests_total counter\n\
         http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1\n\
         # TYPE http_requests_in_flight gauge\n\
         http_requests_in_flight 0\n",
    )
    .unwrap();
    let mut agg = Aggregator::new();
    agg.retire("api", &old);
    let text = agg.render(&[(worker("api", 0), &new)], "");
    let fleet = parse(&text).unwrap();
    let health = [("method", "GET"), ("route", "/health"), ("status", "200")];
    assert_eq!(fleet.get(&key("http_requests_total", &health)), Some(13.0));
    // The departed worker's gauge is forgotten; the new one's is shown.
    assert_eq!(
        lines(&text)
            .iter()
            .filter(|l| l.starts_with("http_requests_in_flight"))
            .collect::<Vec<_>>(),
        [&"http_requests_in_flight{app=\"api\",slot=\"0\"} 0"]
    );
    // Families no live worker has still render, HELP included.
    assert!(text.contains("# HELP http_request_duration_seconds Request latency.\n"));
    let count = key(
        "http_request_duration_seconds_count",
        &[("route", "/health")],
    );
    assert_eq!(fleet.get(&count), Some(12.0));
    assert_eq!(
        fleet.get(&key("provider_latency_seconds_count", &[])),
        Some(3.0)
    );
    // With nobody live at all, the totals remain.
    let empty = parse(&agg.render(&[], "")).unwrap();
    assert_eq!(empty.get(&key("http_requests_total", &health)), Some(12.0));
    assert!(!empty.families.contains_key("http_requests_in_flight"));
}

#[test]
fn render_is_sorted_and_reparseable() {
    let a = parse(WORKER).unwrap();
    let mut agg = Aggregator::new();
    agg.retire("api", &a);
    let live = [(worker("api", 1), &a)];
    let extra = "# HELP heartalk_restarts_total Worker restarts.\n\
                 # TYPE heartalk_restarts_total counter\n\
                 heartalk_restarts_total{app=\"api\"} 4\n";
    let text = agg.render(&live, extra);
    assert!(text.ends_with(extra));
    let histogram: Vec<&str> = lines(&text)
        .into_iter()
        .filter(|l| l.starts_with("http_request_duration"))
        .collect();
    assert_eq!(
        histogram,
        [
            "http_request_duration_seconds_bucket{le=\"0.005\",route=\"/health\"} 20",
            "http_request_duration_seconds_bucket{le=\"0.01\",route=\"/health\"} 22",
            "http_request_duration_seconds_bucket{le=\"0.1\",route=\"/health\"} 24",
            "http_request_duration_seconds_bucket{le=\"1\",route=\"/health\"} 24",
            "http_request_duration_seconds_bucket{le=\"10\",route=\"/health\"} 24",
            "http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/health\"} 24",
            "http_request_duration_seconds_sum{route=\"/health\"} 0.085",
            "http_request_duration_seconds_count{route=\"/health\"} 24",
        ]
    );
    let types: Vec<&str> = lines(&text)
        .into_iter()
        .filter(|l| l.starts_with("# TYPE"))
        .collect();
    assert_eq!(
        types,
        [
            "# TYPE http_request_duration_seconds histogram",
            "# TYPE http_requests_in_flight gauge",
            "# TYPE http_requests_total counter",
            "# TYPE provider_latency_seconds summary",
            "# TYPE heartalk_restarts_total counter",
        ]
    );
    assert_eq!(text.matches("# HELP http_requests_total ").count(), 1);

    let again = parse(&text).unwrap();
    assert_eq!(again.families.len(), 5);
    // Retired plus live: every summed series is twice the worker's —
    // the counter, every histogram series, the summary's _sum and
    // _count — and nothing else is fleet-wide (not the quantiles, not
    // the gauge).
    let health = [("method", "GET"), ("route", "/health"), ("status", "200")];
    let chat = [
        ("method", "POST"),
        ("route", "/api/v1/chat"),
        ("status", "200"),
    ];
    let bucket = |le| {
        key(
            "http_request_duration_seconds_bucket",
            &[("le", le), ("route", "/health")],
        )
    };
    let route = [("route", "/health")];
    let doubled: HashMap<SeriesKey, f64> = [
        (key("http_requests_total", &health), 24.0),
        (key("http_requests_total", &chat), 6.0),
        (bucket("0.005"), 20.0),
        (bucket("0.01"), 22.0),
        (bucket("0.1"), 24.0),
        (bucket("1"), 24.0),
        (bucket("10"), 24.0),
        (bucket("+Inf"), 24.0),
        (key("http_request_duration_seconds_sum", &route), 0.085),
        (key("http_request_duration_seconds_count", &route), 24.0),
        (key("provider_latency_seconds_sum", &[]), 9.0),
        (key("provider_latency_seconds_count", &[]), 6.0),
    ]
    .into_iter()
    .collect();
    let mut without_extra = again.clone();
    without_extra.families.remove("heartalk_restarts_total");
    assert_eq!(fleet_wide(&without_extra), doubled);
    let gauge = key("http_requests_in_flight", &[("app", "api"), ("slot", "1")]);
    assert_eq!(again.get(&gauge), Some(2.0));
    assert_eq!(Aggregator::new().render(&[], ""), "");
}

#[test]
fn values_render_for_prometheus() {
    let cases = [
        (0.0, "0"),
        (-0.0, "0"),
        (12.0, "12"),
        (-3.0, "-3"),
        (0.0425, "0.0425"),
        (1e-3, "0.001"),
        (1e-7, "1e-7"),
        (1.5e20, "1.5e20"),
        (9_007_199_254_740_992.0, "9007199254740992"),
        (1e16, "1e16"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (f64::NAN, "NaN"),
    ];
    for (value, text) in cases {
        let mut out = String::new();
        write_value(&mut out, value);
        assert_eq!(out, text);
        let back = parse_value(&out).unwrap();
        assert!(back == value || (back.is_nan() && value.is_nan()));
    }
}

#[test]
fn type_conflicts_and_odd_values_do_not_break_the_merge() {
    let a = parse("# TYPE m counter\nm 1\n# TYPE n counter\nn NaN\n").unwrap();
    let b = parse("# TYPE m gauge\nm 5\n# TYPE n counter\nn 2\n").unwrap();
    let mut agg = Aggregator::new();
    agg.retire("api", &b);
    let text = agg.render(&[(worker("api", 0), &a)], "");
    let fleet = parse(&text).unwrap();
    assert_eq!(fleet.families["m"].kind, MetricType::Counter);
    assert_eq!(fleet.get(&key("m", &[])), Some(1.0));
    assert_eq!(fleet.get(&key("n", &[])), Some(2.0));
}

#[test]
fn garbage_never_panics_and_accepted_input_round_trips() {
    let mut rng = Rng(0x5eed);
    let alphabet: Vec<char> = "az_:{}=\",\\n #\t\r\n0123456789.+-eInfNaN"
        .chars()
        .collect();
    for round in 0..3000 {
        let text: String = if round % 2 == 0 {
            // Mutate the realistic sample.
            let mut chars: Vec<char> = WORKER.chars().collect();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(chars.len() as u64) as usize;
                let c = alphabet[rng.below(alphabet.len() as u64) as usize];
                match rng.below(3) {
                    0 => chars[i] = c,
                    1 => chars.insert(i, c),
                    _ => {
                        chars.remove(i);
                    }
                }
            }
            chars.into_iter().collect()
        } else {
            (0..rng.below(80))
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect()
        };
        if let Ok(e) = parse(&text) {
            let mut agg = Aggregator::new();
            agg.retire("x", &e);
            let out = agg.render(&[(worker("x", 0), &e)], "");
            assert!(parse(&out).is_ok(), "{text:?} rendered unparseable {out:?}");
        }
    }
}

/// A small deterministic PRNG (splitmix64) for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

const ROUTES: [&str; 3] = ["/health", "/api/v1/chat", "/ready"];
const BOUNDS: [&str; 4] = ["0.005", "0.1", "1", "+Inf"];

/// One simulated worker process: its true metric values.
#[derive(Default)]
struct SimWorker {
    /// Requests per route index; a route appears once first used.
    requests: BTreeMap<usize, u64>,
    /// Per route: bucket counts (cumulative) and sum in 1/8 s units.
    latency: BTreeMap<usize, ([u64; 4], u64)>,
    in_flight: u64,
    /// Provider calls: count, sum in 1/8 s units, and the median the
    /// summary reports (a quantile: never summed).
    provider: (u64, u64, u64),
    /// The last successful scrape, and the fleet-wide values it adds.
    scraped: Option<(Exposition, HashMap<SeriesKey, f64>)>,
}

impl SimWorker {
    fn work(&mut self, rng: &mut Rng) {
        for _ in 0..rng.below(5) {
            let route = rng.below(ROUTES.len() as u64) as usize;
            *self.requests.entry(route).or_default() += 1;
            let bucket = rng.below(4) as usize;
            let (buckets, sum) = self.latency.entry(route).or_default();
            for b in &mut buckets[bucket..] {
                *b += 1;
            }
            *sum += 1 + rng.below(16);
        }
        self.in_flight = rng.below(10);
        self.provider.0 += 1;
        self.provider.1 += 1 + rng.below(16);
        self.provider.2 = rng.below(16);
    }

    /// This worker's exposition, exporter-shaped.
    fn text(&self) -> String {
        let mut t = String::from("# TYPE http_requests_total counter\n");
        for (route, n) in &self.requests {
            let _ = writeln!(t, "http_requests_total{{route=\"{}\"}} {n}", ROUTES[*route]);
        }
        t.push_str("\n# TYPE http_requests_in_flight gauge\n");
        let _ = writeln!(t, "http_requests_in_flight {}", self.in_flight);
        t.push_str("\n# TYPE latency_seconds histogram\n");
        for (route, (buckets, sum)) in &self.latency {
            let r = ROUTES[*route];
            for (le, n) in BOUNDS.iter().zip(buckets) {
                let _ = writeln!(t, "latency_seconds_bucket{{route=\"{r}\",le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                t,
                "latency_seconds_sum{{route=\"{r}\"}} {}",
                *sum as f64 / 8.0
            );
            let _ = writeln!(t, "latency_seconds_count{{route=\"{r}\"}} {}", buckets[3]);
        }
        let (count, sum, median) = self.provider;
        t.push_str("\n# TYPE provider_seconds summary\n");
        let _ = writeln!(
            t,
            "provider_seconds{{quantile=\"0.5\"}} {}",
            median as f64 / 8.0
        );
        let _ = writeln!(t, "provider_seconds_sum {}", sum as f64 / 8.0);
        let _ = writeln!(t, "provider_seconds_count {count}");
        t
    }

    /// What this worker adds to the fleet-wide series, from its own
    /// state (not from the code under test): every counter and
    /// histogram series and the summary's `_sum`/`_count`; not the
    /// gauge, not the quantile.
    fn totals(&self) -> HashMap<SeriesKey, f64> {
        let mut out = HashMap::new();
        for (route, n) in &self.requests {
            out.insert(
                key("http_requests_total", &[("route", ROUTES[*route])]),
                *n as f64,
            );
        }
        for (route, (buckets, sum)) in &self.latency {
            let r = ROUTES[*route];
            for (le, n) in BOUNDS.iter().zip(buckets) {
                out.insert(
                    key("latency_seconds_bucket", &[("le", le), ("route", r)]),
                    *n as f64,
                );
            }
            out.insert(
                key("latency_seconds_sum", &[("route", r)]),
                *sum as f64 / 8.0,
            );
            out.insert(
                key("latency_seconds_count", &[("route", r)]),
                buckets[3] as f64,
            );
        }
        let (count, sum, _) = self.provider;
        if count > 0 {
            out.insert(key("provider_seconds_sum", &[]), sum as f64 / 8.0);
            out.insert(key("provider_seconds_count", &[]), count as f64);
        }
        out
    }

    /// A successful scrape: what the supervisor would parse, and what
    /// it must add to the fleet.
    fn scrape(&mut self) {
        self.scraped = Some((parse(&self.text()).unwrap(), self.totals()));
    }
}

/// The fleet-wide series of a rendered exposition: every sample
/// without a worker's `slot` label (gauges and untyped samples carry
/// one; summed series do not).
fn fleet_wide(e: &Exposition) -> HashMap<SeriesKey, f64> {
    e.families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|s| s.key.label("slot").is_none())
        .map(|s| (s.key.clone(), s.value))
        .collect()
}

#[test]
fn fleet_totals_never_decrease() {
    for seed in 0..20 {
        let mut rng = Rng(seed);
        let mut agg = Aggregator::new();
        let mut slots: Vec<SimWorker> = (0..4).map(|_| SimWorker::default()).collect();
        // The exact expected totals: retired scrapes plus live scrapes.
        let mut retired: HashMap<SeriesKey, f64> = HashMap::new();
        let mut previous: HashMap<SeriesKey, f64> = HashMap::new();
        let mut kills = 0;
        for step in 0..150 {
            for w in &mut slots {
                w.work(&mut rng);
                // Scrapes succeed only some of the time.
                if rng.below(3) > 0 {
                    w.scrape();
                }
                // Sometimes the worker dies: work done since its last
                // scrape is lost, the scrape itself is retired.
                if rng.below(10) == 0 {
                    w.work(&mut rng);
                    if let Some((last, totals)) = &w.scraped {
                        agg.retire("api", last);
                        for (k, v) in totals {
                            *retired.entry(k.clone()).or_default() += v;
                        }
                    }
                    *w = SimWorker::default();
                    kills += 1;
                }
            }
            let live: Vec<(WorkerLabel, &Exposition)> = slots
                .iter()
                .enumerate()
                .filter_map(|(slot, w)| w.scraped.as_ref().map(|(e, _)| (worker("api", slot), e)))
                .collect();
            let text = agg.render(&live, "");
            let now = fleet_wide(&parse(&text).unwrap());

            let mut expected = retired.clone();
            for (_, totals) in slots.iter().filter_map(|w| w.scraped.as_ref()) {
                for (k, v) in totals {
                    *expected.entry(k.clone()).or_default() += v;
                }
            }
            assert_eq!(
                now, expected,
                "seed {seed} step {step}: fleet ≠ retired + live"
            );
            for (k, before) in &previous {
                let after = now.get(k).copied();
                assert!(
                    after.is_some_and(|a| a >= *before),
                    "seed {seed} step {step}: {k:?} went from {before} to {after:?}"
                );
            }
            // Gauges: one per live worker, never a departed one's.
            assert_eq!(text.matches("http_requests_in_flight{").count(), live.len());
            previous = now;
        }
        assert!(
            kills > 10,
            "seed {seed}: the simulation should kill workers"
        );
    }
}
