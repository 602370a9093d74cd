//! Fleet-wide Prometheus metrics: this module owns parsing each worker's
//! text exposition (format 0.0.4, as `metrics-exporter-prometheus` renders
//! it), the running totals of workers that have gone, and the merge of both
//! into the one exposition the supervisor serves. It is pure: no I/O, no
//! clock, no global state; the caller scrapes and serves.
//!
//! Counters and histograms (every bucket, `_sum` and `_count`) are summed
//! series by series across the live workers *plus* a retired accumulator:
//! when a worker leaves, its last scrape is folded into the accumulator and
//! it is dropped from the live list in the same step, so its contribution
//! moves from one term of the sum to the other and the fleet total never
//! goes backwards (increments made after its last scrape are lost, but
//! nothing already shown is taken away). Without the accumulator every
//! restart would look like a counter reset of a fraction of the fleet,
//! which `rate()` cannot detect on a sum. Gauges (and untyped samples,
//! whose meaning is unknown) describe one process *now* — in-flight
//! requests, memory — so they are not summed: each worker's series is
//! shown with `app` and `slot` labels, and a departed worker's gauges are
//! forgotten. Summary `_sum`/`_count` are counters and are summed, but
//! summary quantiles are dropped: a quantile of the union of observations
//! cannot be computed from the workers' quantiles (neither their sum nor
//! their mean is a quantile), and a per-worker quantile under a fleet name
//! would be misleading; use histograms for fleet-wide latency quantiles.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};

use thiserror::Error;

/// The metric types of text format 0.0.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    /// The keyword used on a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    fn from_keyword(word: &str) -> Option<Self> {
        Some(match word {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            "untyped" => MetricType::Untyped,
            _ => return None,
        })
    }

    /// Whether the fleet value is the sum over workers (monotonic types)
    /// rather than one series per worker.
    fn is_summed(self) -> bool {
        matches!(
            self,
            MetricType::Counter | MetricType::Histogram | MetricType::Summary
        )
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One time series: the sample name (`x_bucket`, not the family `x`) and
/// its labels sorted by label name, unescaped. Two samples are the same
/// series exactly when their keys are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    /// Builds a key, sorting the labels by name (a repeated name keeps its
    /// last value).
    pub fn new<K, V>(name: impl Into<String>, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut labels: Vec<(String, String)> = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        // Keep the last of each run of equal names.
        labels.reverse();
        labels.dedup_by(|later, kept| later.0 == kept.0);
        labels.reverse();
        SeriesKey {
            name: name.into(),
            labels,
        }
    }

    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub key: SeriesKey,
    pub value: f64,
    /// Milliseconds since the epoch, if the line had one. Not rendered by
    /// [`Aggregator::render`]: a merged value has no single timestamp.
    pub timestamp_ms: Option<i64>,
}

/// All samples of one metric family (one `# TYPE` name).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub kind: MetricType,
    /// The `# HELP` text, unescaped.
    pub help: Option<String>,
    /// Sorted by [`SeriesKey`], one sample per series (a repeated series
    /// keeps its last sample).
    pub samples: Vec<Sample>,
}

/// A parsed exposition: families by name (the `# TYPE` name, or the sample
/// name for samples without one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// The value of one series, looked up in the family its name belongs to.
    pub fn get(&self, key: &SeriesKey) -> Option<f64> {
        let bases = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .filter_map(|suffix| key.name.strip_suffix(suffix));
        std::iter::once(key.name.as_str())
            .chain(bases)
            .filter_map(|family| self.families.get(family))
            .find_map(|family| {
                family
                    .samples
                    .binary_search_by(|s| s.key.cmp(key))
                    .ok()
                    .map(|i| family.samples[i].value)
            })
    }
}

/// A line [`parse`] rejected, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("metrics exposition line {line}: {kind}")]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// What was wrong with the line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    #[error("invalid metric name at {0:?}")]
    InvalidName(String),
    #[error("`# {0}` line without a metric name")]
    MissingName(&'static str),
    #[error("`# TYPE` line without a type")]
    MissingType,
    #[error("unknown metric type {0:?}")]
    UnknownType(String),
    #[error("metric {name} declared {new} after {old}")]
    ConflictingType {
        name: String,
        old: MetricType,
        new: MetricType,
    },
    #[error("malformed labels: {0}")]
    BadLabels(&'static str),
    #[error("label {0:?} appears twice")]
    DuplicateLabel(String),
    #[error("sample without a value")]
    MissingValue,
    #[error("invalid sample value {0:?}")]
    BadValue(String),
    #[error("invalid timestamp {0:?}")]
    BadTimestamp(String),
    #[error("unexpected text {0:?} at end of line")]
    TrailingText(String),
}

/// Parses a text exposition (format 0.0.4).
///
/// Samples are grouped into families by their `# TYPE` name: `x_bucket`,
/// `x_sum` and `x_count` belong to histogram `x`, `x_sum`/`x_count` to
/// summary `x`, and `x_total` to counter `x` when only `x` is declared.
/// A sample no `# TYPE` covers forms an `untyped` family of its own name;
/// a later `# TYPE` for that name gives the family its type. `# HELP`
/// text is kept (unescaped) whatever its position. Blank lines and other
/// comments are ignored; interleaved families are regrouped. The error
/// names the first line that is malformed: bad name, labels, value or
/// timestamp, trailing text, an unknown type, or a name declared with two
/// different types. Never panics.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut parser = Parser::default();
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        parser.line(line).map_err(|kind| ParseError {
            line: index + 1,
            kind,
        })?;
    }
    Ok(parser.finish())
}

#[derive(Default)]
struct Parser {
    families: HashMap<String, Family>,
    /// Names with a `# TYPE` line (the others in `families` are implicit).
    declared: HashSet<String>,
    help: HashMap<String, String>,
}

impl Parser {
    fn line(&mut self, line: &str) -> Result<(), ParseErrorKind> {
        let line = line.trim_matches(is_blank);
        if line.is_empty() {
            return Ok(());
        }
        match line.strip_prefix('#') {
            Some(comment) => self.comment(comment),
            None => self.sample(line),
        }
    }

    fn comment(&mut self, comment: &str) -> Result<(), ParseErrorKind> {
        let (keyword, rest) = split_token(comment);
        match keyword {
            "HELP" => {
                let (name, text) = split_token(rest);
                if name.is_empty() {
                    return Err(ParseErrorKind::MissingName("HELP"));
                }
                check_metric_name(name)?;
                self.help
                    .entry(name.to_owned())
                    .or_insert_with(|| unescape_help(text));
                Ok(())
            }
            "TYPE" => {
                let (name, rest) = split_token(rest);
                if name.is_empty() {
                    return Err(ParseErrorKind::MissingName("TYPE"));
                }
                check_metric_name(name)?;
                let (word, rest) = split_token(rest);
                if word.is_empty() {
                    return Err(ParseErrorKind::MissingType);
                }
                let kind = MetricType::from_keyword(word)
                    .ok_or_else(|| ParseErrorKind::UnknownType(snippet(word)))?;
                if !rest.is_empty() {
                    return Err(ParseErrorKind::TrailingText(snippet(rest)));
                }
                if self.declared.contains(name) {
                    let old = self.families.get(name).map_or(kind, |f| f.kind);
                    if old != kind {
                        return Err(ParseErrorKind::ConflictingType {
                            name: name.to_owned(),
                            old,
                            new: kind,
                        });
                    }
                    return Ok(());
                }
                self.declared.insert(name.to_owned());
                self.families
                    .entry(name.to_owned())
                    .or_insert_with(|| empty_family(kind))
                    .kind = kind;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn sample(&mut self, line: &str) -> Result<(), ParseErrorKind> {
        let sample = parse_sample(line)?;
        let family = self.family_of(&sample.key.name);
        match self.families.get_mut(family) {
            Some(f) => f.samples.push(sample),
            None => {
                let mut f = empty_family(MetricType::Untyped);
                let name = family.to_owned();
                f.samples.push(sample);
                self.families.insert(name, f);
            }
        }
        Ok(())
    }

    /// The family a sample name belongs to.
    fn family_of<'n>(&self, name: &'n str) -> &'n str {
        if self.declared.contains(name) {
            return name;
        }
        const SUFFIXES: [(&str, &[MetricType]); 4] = [
            ("_bucket", &[MetricType::Histogram]),
            ("_sum", &[MetricType::Histogram, MetricType::Summary]),
            ("_count", &[MetricType::Histogram, MetricType::Summary]),
            ("_total", &[MetricType::Counter]),
        ];
        for (suffix, kinds) in SUFFIXES {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            if !self.declared.contains(base) {
                continue;
            }
            if let Some(family) = self.families.get(base) {
                if kinds.contains(&family.kind) {
                    return base;
                }
            }
        }
        name
    }

    fn finish(mut self) -> Exposition {
        let mut families = BTreeMap::new();
        for (name, mut family) in self.families {
            family.help = self.help.remove(&name);
            family.samples.sort_by(|a, b| a.key.cmp(&b.key));
            let mut unique: Vec<Sample> = Vec::with_capacity(family.samples.len());
            for sample in family.samples {
                match unique.last_mut() {
                    Some(last) if last.key == sample.key => *last = sample,
                    _ => unique.push(sample),
                }
            }
            family.samples = unique;
            families.insert(name, family);
        }
        Exposition { families }
    }
}

fn empty_family(kind: MetricType) -> Family {
    Family {
        kind,
        help: None,
        samples: Vec::new(),
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The first blank-separated token and the rest, both trimmed.
fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_blank);
    match s.find(is_blank) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(is_blank)),
        None => (s, ""),
    }
}

/// At most 40 characters of `s`, for error messages.
fn snippet(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Length of the metric name `[a-zA-Z_:][a-zA-Z0-9_:]*` at the start of `s`.
fn metric_name_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' || *b == b':' => {}
        _ => return 0,
    }
    bytes
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b':')
        .count()
}

/// Length of the label name `[a-zA-Z_][a-zA-Z0-9_]*` at the start of `s`.
fn label_name_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {}
        _ => return 0,
    }
    bytes
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count()
}

fn check_metric_name(name: &str) -> Result<(), ParseErrorKind> {
    if metric_name_len(name) == name.len() {
        Ok(())
    } else {
        Err(ParseErrorKind::InvalidName(snippet(name)))
    }
}

fn skip_blanks(bytes: &[u8], mut pos: usize) -> usize {
    while matches!(bytes.get(pos), Some(b' ' | b'\t')) {
        pos += 1;
    }
    pos
}

/// `name{labels} value [timestamp]`, already trimmed.
fn parse_sample(line: &str) -> Result<Sample, ParseErrorKind> {
    let bytes = line.as_bytes();
    let name_len = metric_name_len(line);
    if name_len == 0 {
        return Err(ParseErrorKind::InvalidName(snippet(line)));
    }
    let mut labels = Vec::new();
    let mut pos = skip_blanks(bytes, name_len);
    if bytes.get(pos) == Some(&b'{') {
        pos = parse_labels(line, pos + 1, &mut labels)?;
    } else if pos == name_len && pos < bytes.len() {
        // A character that can neither continue the name nor follow it.
        return Err(ParseErrorKind::InvalidName(snippet(line)));
    }
    let (value, rest) = split_token(line.get(pos..).unwrap_or(""));
    if value.is_empty() {
        return Err(ParseErrorKind::MissingValue);
    }
    let value = parse_value(value).ok_or_else(|| ParseErrorKind::BadValue(snippet(value)))?;
    let (timestamp, rest) = split_token(rest);
    let timestamp_ms = if timestamp.is_empty() {
        None
    } else {
        Some(
            timestamp
                .parse::<i64>()
                .map_err(|_| ParseErrorKind::BadTimestamp(snippet(timestamp)))?,
        )
    };
    if !rest.is_empty() {
        return Err(ParseErrorKind::TrailingText(snippet(rest)));
    }
    labels.sort_by(|a: &(String, String), b| a.0.cmp(&b.0));
    if let Some(pair) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ParseErrorKind::DuplicateLabel(snippet(&pair[0].0)));
    }
    Ok(Sample {
        key: SeriesKey {
            name: line[..name_len].to_owned(),
            labels,
        },
        value,
        timestamp_ms,
    })
}

/// Parses `l1="v1",l2="v2"}` starting after the `{`; returns the position
/// after the `}`. A trailing comma is accepted, as Prometheus does.
fn parse_labels(
    line: &str,
    mut pos: usize,
    labels: &mut Vec<(String, String)>,
) -> Result<usize, ParseErrorKind> {
    let bytes = line.as_bytes();
    loop {
        pos = skip_blanks(bytes, pos);
        match bytes.get(pos) {
            None => return Err(ParseErrorKind::BadLabels("missing '}'")),
            Some(b'}') => return Ok(pos + 1),
            Some(_) => {}
        }
        let name_len = label_name_len(line.get(pos..).unwrap_or(""));
        if name_len == 0 {
            return Err(ParseErrorKind::BadLabels("expected a label name"));
        }
        let name = &line[pos..pos + name_len];
        pos = skip_blanks(bytes, pos + name_len);
        if bytes.get(pos) != Some(&b'=') {
            return Err(ParseErrorKind::BadLabels("expected '=' after a label name"));
        }
        pos = skip_blanks(bytes, pos + 1);
        if bytes.get(pos) != Some(&b'"') {
            return Err(ParseErrorKind::BadLabels("expected a quoted label value"));
        }
        pos += 1;
        let start = pos;
        loop {
            match bytes.get(pos) {
                None => return Err(ParseErrorKind::BadLabels("unterminated label value")),
                Some(b'\\') => pos += 2,
                Some(b'"') => break,
                Some(_) => pos += 1,
            }
        }
        // `start` and `pos` sit next to ASCII quotes: both are char boundaries.
        labels.push((name.to_owned(), unescape_label(&line[start..pos])));
        pos = skip_blanks(bytes, pos + 1);
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b'}') => return Ok(pos + 1),
            _ => return Err(ParseErrorKind::BadLabels("expected ',' or '}'")),
        }
    }
}

/// A Go `ParseFloat`-compatible value: decimals, exponents, `+Inf`, `-Inf`,
/// `NaN` (case-insensitive).
fn parse_value(token: &str) -> Option<f64> {
    token.parse::<f64>().ok()
}

/// Label values escape `\\`, `\"` and `\n`; any other backslash pair is
/// kept as written (Prometheus does the same).
fn unescape_label(raw: &str) -> String {
    unescape(raw, true)
}

/// HELP text escapes `\\` and `\n`.
fn unescape_help(raw: &str) -> String {
    unescape(raw, false)
}

fn unescape(raw: &str, quotes: bool) -> String {
    if !raw.contains('\\') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Which worker an exposition came from; becomes the `app` and `slot`
/// labels of its gauges and untyped samples.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerLabel {
    pub app: String,
    pub slot: usize,
}

/// The fleet-wide merge, holding the summed totals of departed workers.
///
/// Contract (monotonicity): render after render, every counter, histogram
/// (bucket, `_sum`, `_count`) and summary `_sum`/`_count` series of the
/// output is ≥ its previous value, provided that
/// - each live worker is rendered with its latest successful scrape, whose
///   counters never decrease (a worker whose scrape fails keeps its
///   previous one rather than vanishing from `live`);
/// - a departing worker is [`retire`](Self::retire)d with the same last
///   scrape it was rendered with (or a newer one) and is absent from `live`
///   from then on;
/// - the metric's type does not change between worker versions.
///
/// Memory grows with the number of distinct summed series ever seen, not
/// with the number of workers retired.
#[derive(Debug, Clone, Default)]
pub struct Aggregator {
    retired: BTreeMap<String, Retired>,
}

#[derive(Debug, Clone)]
struct Retired {
    kind: MetricType,
    help: Option<String>,
    totals: HashMap<SeriesKey, f64>,
}

/// One family of the output while it is being merged.
struct Merged<'a> {
    kind: MetricType,
    help: Option<&'a str>,
    summed: HashMap<&'a SeriesKey, f64>,
    per_worker: HashMap<SeriesKey, f64>,
}

impl<'a> Merged<'a> {
    fn new(kind: MetricType) -> Self {
        Merged {
            kind,
            help: None,
            summed: HashMap::new(),
            per_worker: HashMap::new(),
        }
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds a departing worker's last scrape into the retired totals:
    /// counters, histogram buckets/`_sum`/`_count` and summary
    /// `_sum`/`_count` are added series by series and stay in every later
    /// render. Summary quantiles, gauges and untyped samples are dropped.
    /// HELP and TYPE are kept so the family still renders once no live
    /// worker has it. NaN and infinite values are skipped (they would pin
    /// the fleet total forever). A family whose type differs from the one
    /// already retired under that name is skipped, with a warning.
    pub fn retire(&mut self, app: &str, last: &Exposition) {
        let mut series = 0usize;
        for (name, family) in &last.families {
            if !family.kind.is_summed() {
                continue;
            }
            let retired = self.retired.entry(name.clone()).or_insert_with(|| Retired {
                kind: family.kind,
                help: None,
                totals: HashMap::new(),
            });
            if retired.kind != family.kind {
                tracing::warn!(
                    event = "metrics_type_conflict",
                    app,
                    metric = %name,
                    retired = %retired.kind,
                    worker = %family.kind,
                    "metric changed type; not adding this worker's values",
                );
                continue;
            }
            if family.help.is_some() {
                retired.help.clone_from(&family.help);
            }
            for sample in &family.samples {
                if is_summable(family.kind, name, &sample.key) && sample.value.is_finite() {
                    *retired.totals.entry(sample.key.clone()).or_insert(0.0) += sample.value;
                    series += 1;
                }
            }
        }
        tracing::debug!(event = "metrics_retired", app, series);
    }

    /// Renders the fleet exposition: the merged families of `live` and the
    /// retired totals, sorted by family name, then `extra` verbatim (the
    /// supervisor's own families; the caller keeps their names distinct).
    ///
    /// Summed types (see [`Aggregator`]) are added series by series over
    /// the live workers and the retired totals; summary quantiles are
    /// dropped; NaN and infinite values are skipped. Gauges and untyped
    /// samples are emitted per worker with `app="<app>",slot="<slot>"`
    /// added (a series that already has an `app` or `slot` label keeps
    /// its own value; if two workers then produce the same series, the
    /// first in `live` wins). If workers disagree on a family's type, the
    /// first in `live` wins, then the retired type, and the other
    /// samples are left out. Each family has at most one `# HELP` and
    /// exactly one `# TYPE` line; series are sorted, histogram buckets by
    /// numeric `le` (`+Inf` last) followed by `_sum` and `_count`.
    /// Timestamps are not rendered. The output parses with [`parse`].
    pub fn render(&self, live: &[(WorkerLabel, &Exposition)], extra: &str) -> String {
        let mut merged: BTreeMap<&str, Merged<'_>> = BTreeMap::new();
        let mut total_series = 0usize;
        for (worker, exposition) in live {
            let slot = worker.slot.to_string();
            for (name, family) in &exposition.families {
                let out = merged
                    .entry(name.as_str())
                    .or_insert_with(|| Merged::new(family.kind));
                if out.kind != family.kind {
                    continue;
                }
                if out.help.is_none() {
                    out.help = family.help.as_deref();
                }
                total_series += family.samples.len();
                if family.kind.is_summed() {
                    for sample in &family.samples {
                        if is_summable(family.kind, name, &sample.key) && sample.value.is_finite() {
                            *out.summed.entry(&sample.key).or_insert(0.0) += sample.value;
                        }
                    }
                } else {
                    for sample in &family.samples {
                        out.per_worker
                            .entry(with_worker(&sample.key, &worker.app, &slot))
                            .or_insert(sample.value);
                    }
                }
            }
        }
        for (name, retired) in &self.retired {
            let out = merged
                .entry(name.as_str())
                .or_insert_with(|| Merged::new(retired.kind));
            if out.kind != retired.kind {
                continue;
            }
            if out.help.is_none() {
                out.help = retired.help.as_deref();
            }
            total_series += retired.totals.len();
            for (key, value) in &retired.totals {
                *out.summed.entry(key).or_insert(0.0) += value;
            }
        }

        let mut text = String::with_capacity(total_series * 64 + extra.len() + 64);
        for (name, family) in &merged {
            write_family(&mut text, name, family);
        }
        text.push_str(extra);
        text
    }
}

/// Whether a sample of a summed family is added up: all of a counter's or
/// histogram's, only `_sum`/`_count` of a summary (not its quantiles).
fn is_summable(kind: MetricType, family: &str, key: &SeriesKey) -> bool {
    match kind {
        MetricType::Summary => key.name != family && key.label("quantile").is_none(),
        _ => true,
    }
}

/// `key` with `app` and `slot` labels added unless already present.
fn with_worker(key: &SeriesKey, app: &str, slot: &str) -> SeriesKey {
    let mut labels = Vec::with_capacity(key.labels.len() + 2);
    labels.extend(key.labels.iter().cloned());
    for (name, value) in [("app", app), ("slot", slot)] {
        if let Err(i) = labels.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            labels.insert(i, (name.to_owned(), value.to_owned()));
        }
    }
    SeriesKey {
        name: key.name.clone(),
        labels,
    }
}

/// Sort position of a histogram bucket's `le`: numeric, with anything
/// unparsable after every number.
#[derive(Debug, Clone, Copy)]
enum Bound<'a> {
    None,
    Number(f64),
    Text(&'a str),
}

impl Bound<'_> {
    fn rank(&self) -> u8 {
        match self {
            Bound::None => 0,
            Bound::Number(_) => 1,
            Bound::Text(_) => 2,
        }
    }
}

impl Ord for Bound<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Bound::Number(a), Bound::Number(b)) => a.total_cmp(b),
            (Bound::Text(a), Bound::Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Bound<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bound<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound<'_> {}

/// (labels without `le`, suffix rank, `le`, sample name): groups a
/// histogram's series by label set, buckets by bound, then `_sum`, `_count`.
type SortKey<'a> = (Vec<(&'a str, &'a str)>, u8, Bound<'a>, &'a str);

fn sort_key<'a>(family: &str, key: &'a SeriesKey) -> SortKey<'a> {
    let rank = match key.name.strip_prefix(family) {
        Some("") => 0,
        Some("_bucket") => 1,
        Some("_sum") => 2,
        Some("_count") => 3,
        _ => 4,
    };
    let mut bound = Bound::None;
    let mut group = Vec::with_capacity(key.labels.len());
    for (name, value) in &key.labels {
        if rank == 1 && name == "le" {
            bound = match value.parse::<f64>() {
                Ok(v) => Bound::Number(v),
                Err(_) => Bound::Text(value),
            };
        } else {
            group.push((name.as_str(), value.as_str()));
        }
    }
    (group, rank, bound, key.name.as_str())
}

fn write_family(out: &mut String, name: &str, family: &Merged<'_>) {
    if let Some(help) = family.help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape_into(out, help, false);
        out.push('\n');
    }
    out.push_str("# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(family.kind.as_str());
    out.push('\n');

    let mut rows: Vec<(SortKey<'_>, &SeriesKey, f64)> = family
        .summed
        .iter()
        .map(|(key, value)| (sort_key(name, key), *key, *value))
        .chain(
            family
                .per_worker
                .iter()
                .map(|(key, value)| (sort_key(name, key), key, *value)),
        )
        .collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, key, value) in rows {
        write_sample(out, key, value);
    }
    out.push('\n');
}

fn write_sample(out: &mut String, key: &SeriesKey, value: f64) {
    out.push_str(&key.name);
    if !key.labels.is_empty() {
        out.push('{');
        for (i, (name, value)) in key.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(name);
            out.push_str("=\"");
            escape_into(out, value, true);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// Escapes `\` and newline (and `"` in label values).
pub(crate) fn escape_into(out: &mut String, text: &str, quotes: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A value as Prometheus parses it: `+Inf`, `-Inf`, `NaN`; integral values
/// without a decimal point; the shortest round-trip decimal otherwise,
/// in exponent form when very small or large.
fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if value == 0.0 {
        out.push('0');
    } else if (1e-4..1e16).contains(&value.abs()) {
        let _ = write!(out, "{value}");
    } else {
        let _ = write!(out, "{value:e}");
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
