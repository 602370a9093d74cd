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
mod tests {
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
                    .filter_map(|(slot, w)| {
                        w.scraped.as_ref().map(|(e, _)| (worker("api", slot), e))
                    })
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
}
