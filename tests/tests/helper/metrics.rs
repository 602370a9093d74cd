//! Reading Prometheus expositions: scrape, find series, sum samples.

use super::*;

/// `addr`'s `/metrics` exposition: the body of a 200 answered within 5 s.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let r = http_get(addr, "/metrics", Duration::from_secs(5)).ok()?;
    (r.status == 200).then_some(r.body)
}

/// The value of the first series of `name` on `addr`'s `/metrics` whose
/// labels contain `labels` (e.g. `endpoint="chat"`): [`sample`] of one
/// [`scrape`]. `None`: no answer, or no such series.
pub fn metric(addr: SocketAddr, name: &str, labels: &str) -> Option<f64> {
    sample(&scrape(addr)?, name, labels)
}

/// The samples of a Prometheus text exposition, in order, as (series,
/// value): the series as written (`name` or `name{labels}`), the value
/// parsed. Comments, blank lines and lines whose value is not a number are
/// skipped.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
}

/// The metric name of a series: `name{labels}` → `name`.
pub fn series_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// The [`samples`] of the metric `name` (exactly: `x` is not `x_total`)
/// whose series contains `labels` (e.g. `endpoint="chat"`; `""`: all).
pub fn samples_of<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a str,
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    samples(text).filter(move |(series, _)| series_name(series) == name && series.contains(labels))
}

/// The value of the first of [`samples_of`]`(text, name, labels)`.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    samples_of(text, name, labels).next().map(|(_, v)| v)
}

/// The sum of [`samples_of`]`(text, name, labels)` (0 when there is none).
pub fn sample_sum(text: &str, name: &str, labels: &str) -> f64 {
    samples_of(text, name, labels).map(|(_, v)| v).sum()
}

/// Every metric name of a text exposition, from its `# TYPE` lines
/// (histograms and summaries with their `_bucket` / `_sum` / `_count`
/// series) and its sample lines.
pub fn exposition_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}
