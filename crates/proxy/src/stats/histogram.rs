//! Histograms with Envoy's semantics for the proxy's own stats (`downstream_rq_time`,
//! `upstream_rq_time`, ...), on the same model as plugin histograms (`wasm_host::Metric`:
//! samples show after a stats flush), and how `/stats` and `/stats/prometheus` write any
//! histogram.

use std::fmt::Write as _;
use std::sync::Arc;

use wasm_host::{FlushedHistogram, HISTOGRAM_BUCKETS, MetricValue, QUANTILE_LABELS};

/// A histogram of the proxy (values in ms, as Envoy's `*_time` and `*_ms` stats).
#[derive(Debug, Clone)]
pub struct Histogram(pub(crate) Arc<wasm_host::Metric>);

impl Histogram {
    /// Records one sample.
    pub fn record(&self, v: u64) {
        let _ = self.0.record(v);
    }

    /// Records a duration in whole milliseconds (Envoy truncates).
    pub fn record_ms(&self, d: std::time::Duration) {
        self.record(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    }

    /// What the admin API shows: the statistics of the last flush.
    pub(crate) fn flushed(&self) -> Box<FlushedHistogram> {
        match self.0.value() {
            MetricValue::Histogram { flushed, .. } => flushed,
            _ => Box::new(FlushedHistogram::empty()),
        }
    }
}

/// `/stats/prometheus` lines of histogram `n` with labels `inner` (`k="v",...` or empty): the
/// buckets, `_sum` and `_count` as of the last flush.
pub(crate) fn prometheus_lines(n: &str, inner: &str, h: &FlushedHistogram) -> String {
    let with = |extra: &str| match (inner.is_empty(), extra.is_empty()) {
        (true, true) => "{}".to_string(),
        (true, false) => format!("{{{extra}}}"),
        (false, true) => format!("{{{inner}}}"),
        (false, false) => format!("{{{inner},{extra}}}"),
    };
    // Envoy's sum is its histogram's approximation, written `%.32g`.
    let sum = format_g32(h.sum);
    let mut s = String::new();
    for (le, c) in HISTOGRAM_BUCKETS.iter().zip(&h.buckets) {
        let _ = writeln!(s, "{n}_bucket{} {c}", with(&format!("le=\"{le}\"")));
    }
    let _ = write!(
        s,
        "{n}_bucket{} {}\n{n}_sum{} {sum}\n{n}_count{} {}\n",
        with("le=\"+Inf\""),
        h.count,
        with(""),
        with(""),
        h.count
    );
    s
}

/// Envoy's `/stats` line for a histogram (`ParentHistogramImpl::quantileSummary`):
/// `P0(<interval>,<cumulative>) P25(...) ...`, or `No recorded values` until a flush had samples.
pub(crate) fn quantile_summary(h: &FlushedHistogram) -> String {
    if !h.used {
        return "No recorded values".into();
    }
    let parts: Vec<String> = QUANTILE_LABELS
        .iter()
        .zip(h.interval.iter().zip(&h.cumulative))
        .map(|(q, (i, c))| format!("P{q}({},{})", format_fmt(*i), format_fmt(*c)))
        .collect();
    parts.join(" ")
}

/// A double as fmt's `{}` writes it (what Envoy's admin uses): the shortest digits that read
/// back the same, `nan`, and exponent notation from 1e16 (or below 1e-4).
pub(crate) fn format_fmt(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{x:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", e.abs());
    }
    x.to_string()
}

/// `%.32g`: 32 significant digits, trailing zeros dropped, scientific notation only for
/// exponents below -4 or from 32 (how Envoy writes a histogram's `_sum`).
pub(crate) fn format_g32(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return if x == 0.0 { "0".into() } else { x.to_string() };
    }
    let sci = format!("{x:.31e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..32).contains(&exp) {
        let m = trim(mantissa.to_string());
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.abs());
    }
    let (neg, digits) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m.replace('.', "")),
        None => (false, mantissa.replace('.', "")),
    };
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let p = (point as usize).min(digits.len());
        let (int, frac) = digits.split_at(p);
        format!("{int}.{frac}")
    };
    let body = trim(body);
    if neg { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::{format_fmt, format_g32};

    /// The `_sum` values Envoy 1.40 printed for the envoy-wasm stats test plugin (one and
    /// three samples of 3, each counted as its bin's midpoint).
    #[test]
    fn sums_are_written_as_envoy_writes_them() {
        let mid = 3.0 + 0.1 * (3.0 / (3.0 + 3.1));
        assert_eq!(format_g32(mid), "3.0491803278688522915729208762059");
        assert_eq!(format_g32(3.0 * mid), "9.1475409836065573188079724786803");
        assert_eq!(format_g32(0.0), "0");
        assert_eq!(format_g32(250.0), "250");
        assert_eq!(format_g32(0.5), "0.5");
    }

    /// Quantiles as Envoy's admin writes them (fmt's `{}`).
    #[test]
    fn quantiles_are_written_as_fmt_writes_them() {
        assert_eq!(format_fmt(f64::NAN), "nan");
        assert_eq!(format_fmt(0.0), "0");
        assert_eq!(format_fmt(50500.0), "50500");
        assert_eq!(format_fmt(1033.3333333333333), "1033.3333333333333");
        assert_eq!(format_fmt(1.05), "1.05");
        assert_eq!(format_fmt(1.5e19), "1.5e+19");
    }
}
