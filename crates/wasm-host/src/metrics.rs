//! Plugin-defined metrics (`proxy_define_metric` & co), shared by every VM in the process.
//! The proxy reads them with [`Metrics::snapshot`] for `/stats` and `/stats/prometheus`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::abi::{MetricType, Status};
use crate::circllhist::{self, Bin, Bins};

/// Envoy's default histogram bucket bounds.
pub const HISTOGRAM_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// One metric's storage.
#[derive(Debug)]
pub struct Metric {
    name: String,
    kind: MetricType,
    value: AtomicI64,
    /// Written at least once (Envoy's "used" flag: `/stats?usedonly`).
    used: AtomicBool,
    hist: Option<Histogram>,
}

/// A histogram as Envoy keeps one: samples go to the current interval; each stats flush
/// (every `stats_flush_interval`, 5 s by default) makes them the last interval and adds them to
/// the cumulative histogram. The admin API shows only what was flushed.
#[derive(Debug)]
struct Histogram {
    clock: Arc<FlushClock>,
    state: Mutex<HistState>,
}

#[derive(Debug, Default)]
struct HistState {
    /// Samples since the last flush.
    pending: Bins,
    /// Exact count and sum of every sample (tests and `plugin trial` read them at once).
    count: u64,
    sum: u64,
    /// The flush period this state was last brought up to.
    period: u64,
    /// Flushed at least once after a sample (Envoy's `ParentHistogram::used()`).
    merged: bool,
    interval: Bins,
    cumulative: Bins,
}

impl HistState {
    /// Performs the flushes due by `period` (Envoy merges only a histogram that has samples;
    /// a later flush with none leaves an empty interval).
    fn catch_up(&mut self, period: u64) {
        if period <= self.period {
            return;
        }
        if self.count > 0 {
            let passed = period - self.period;
            self.interval = std::mem::take(&mut self.pending);
            for (b, c) in &self.interval {
                *self.cumulative.entry(*b).or_default() += c;
            }
            if passed > 1 {
                self.interval.clear();
            }
            self.merged = true;
        }
        self.period = period;
    }
}

/// When stats flushes happen: every `interval` from `start` (Envoy's flush timer, armed at
/// start-up). Flushes are computed when a histogram is written or read, so no thread runs them.
#[derive(Debug)]
struct FlushClock {
    start: Instant,
    interval_ms: AtomicU64,
}

impl FlushClock {
    fn period(&self) -> u64 {
        let ms = self.interval_ms.load(Ordering::Relaxed).max(1);
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) / ms
    }
}

/// What Envoy's admin API shows of a histogram: the statistics of its last flush.
#[derive(Debug, Clone, PartialEq)]
pub struct FlushedHistogram {
    /// Flushed with samples at least once; Envoy prints `No recorded values` until then.
    pub used: bool,
    /// Samples at or below each [`HISTOGRAM_BUCKETS`] bound (the bound's whole bin counts).
    pub buckets: Vec<u64>,
    /// Cumulative sample count.
    pub count: u64,
    /// Cumulative sum, each sample at its bin's midpoint (Envoy's `_sum`).
    pub sum: f64,
    /// [`QUANTILES`](crate::circllhist::QUANTILES) of the last interval (NaN: no samples).
    pub interval: [f64; 10],
    /// The same over every flushed sample.
    pub cumulative: [f64; 10],
}

impl FlushedHistogram {
    /// A histogram never flushed with samples (`No recorded values`).
    pub fn empty() -> Self {
        Self {
            used: false,
            buckets: vec![0; HISTOGRAM_BUCKETS.len()],
            count: 0,
            sum: 0.0,
            interval: [f64::NAN; 10],
            cumulative: [f64::NAN; 10],
        }
    }
}

/// A metric's value at one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Counter(u64),
    Gauge(i64),
    /// Every sample so far (exact count and sum), and what Envoy's admin API shows.
    Histogram {
        count: u64,
        sum: u64,
        flushed: Box<FlushedHistogram>,
    },
}

/// All plugin metrics of a process.
#[derive(Debug)]
pub struct Metrics {
    inner: RwLock<Registry>,
    clock: Arc<FlushClock>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            clock: Arc::new(FlushClock {
                start: Instant::now(),
                interval_ms: AtomicU64::new(DEFAULT_FLUSH_MS),
            }),
        }
    }
}

/// Envoy's default `stats_flush_interval`.
const DEFAULT_FLUSH_MS: u64 = 5000;

#[derive(Debug, Default)]
struct Registry {
    /// By kind and name: a counter and a histogram may share a name (Envoy keeps them apart).
    by_name: HashMap<(MetricType, String), usize>,
    all: Vec<Arc<Metric>>,
    /// Per kind, the metrics in definition order (their ids' sequence numbers, from 1).
    by_kind: [Vec<usize>; 3],
}

/// Envoy's id for the `n`th (from 0) metric of `kind`: a sequence per kind from 1, with the
/// kind in the low 2 bits (counters 4, 8, 12...; gauges 5, 9...; histograms 6, 10...). No
/// metric has id 0.
fn metric_id(kind: MetricType, n: usize) -> u32 {
    (((n + 1) as u32) << 2) | kind as u32
}

/// Envoy's `Stats::Utility::sanitizeStatsName`: one leading and one trailing `.` dropped,
/// `://`, `:/`, `:` and NUL each replaced by `_`.
pub(crate) fn sanitize_stat_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = name.strip_prefix('.').unwrap_or(name);
    name.replace("://", "_")
        .replace(":/", "_")
        .replace([':', '\0'], "_")
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The bootstrap's `stats_flush_interval`: how often histograms are flushed.
    pub fn set_flush_interval(&self, d: std::time::Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        self.clock.interval_ms.store(ms, Ordering::Relaxed);
    }

    /// Defines (or finds) a metric; the id encodes the kind in its low 2 bits and counts the
    /// metrics of that kind from 1, as Envoy's ids do.
    /// The name is cleaned as Envoy's `Stats::Utility::sanitizeStatsName` cleans it.
    pub fn define(&self, kind: MetricType, name: &str) -> (u32, Arc<Metric>) {
        let clean = sanitize_stat_name(name);
        let name = clean.as_str();
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&idx) = g.by_name.get(&(kind, name.to_string())) {
            let m = g.all[idx].clone();
            let n = g.by_kind[kind as usize]
                .iter()
                .position(|&i| i == idx)
                .unwrap_or_default();
            return (metric_id(kind, n), m);
        }
        let hist = (kind == MetricType::Histogram).then(|| Histogram {
            clock: self.clock.clone(),
            state: Mutex::new(HistState {
                period: self.clock.period(),
                ..HistState::default()
            }),
        });
        let m = Arc::new(Metric {
            name: name.to_string(),
            kind,
            value: AtomicI64::new(0),
            used: AtomicBool::new(false),
            hist,
        });
        let idx = g.all.len();
        g.all.push(m.clone());
        g.by_name.insert((kind, name.to_string()), idx);
        let seq = &mut g.by_kind[kind as usize];
        seq.push(idx);
        (metric_id(kind, seq.len() - 1), m)
    }

    /// The metric behind an id.
    pub fn get(&self, id: u32) -> Option<Arc<Metric>> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let n = (id >> 2) as usize;
        let idx = g.by_kind.get((id & 3) as usize)?.get(n.checked_sub(1)?)?;
        g.all.get(*idx).cloned()
    }

    /// Every metric's name, kind and value, in definition order.
    pub fn snapshot(&self) -> Vec<(String, MetricValue)> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.all.iter().map(|m| (m.name.clone(), m.value())).collect()
    }

    /// Like [`Metrics::snapshot`], with each metric's used flag (Envoy's `/stats?usedonly`:
    /// counters and gauges ever written, histograms flushed with samples).
    pub fn snapshot_used(&self) -> Vec<(String, MetricValue, bool)> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.all
            .iter()
            .map(|m| {
                let v = m.value();
                let used = match &v {
                    MetricValue::Histogram { flushed, .. } => flushed.used,
                    _ => m.used.load(Ordering::Relaxed),
                };
                (m.name.clone(), v, used)
            })
            .collect()
    }
}

impl Metric {
    /// The metric's name as the plugin defined it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counter, gauge or histogram.
    pub fn kind(&self) -> MetricType {
        self.kind
    }

    fn mark(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// `proxy_increment_metric`: counters take positive deltas only, histograms none.
    pub fn increment(&self, delta: i64) -> Status {
        match self.kind {
            MetricType::Counter if delta > 0 => {
                self.value.fetch_add(delta, Ordering::Relaxed);
                self.mark();
                Status::Ok
            }
            MetricType::Gauge => {
                self.value.fetch_add(delta, Ordering::Relaxed);
                self.mark();
                Status::Ok
            }
            _ => Status::BadArgument,
        }
    }

    /// `proxy_record_metric`: counter adds (as Envoy does), gauge sets, histogram records.
    pub fn record(&self, value: u64) -> Status {
        match self.kind {
            MetricType::Counter => {
                self.value.fetch_add(value as i64, Ordering::Relaxed);
            }
            MetricType::Gauge => self.value.store(value as i64, Ordering::Relaxed),
            MetricType::Histogram => {
                if let Some(h) = &self.hist {
                    let period = h.clock.period();
                    let mut st = h.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.catch_up(period);
                    *st.pending.entry(Bin::of(value)).or_default() += 1;
                    st.count += 1;
                    st.sum = st.sum.saturating_add(value);
                }
            }
        }
        self.mark();
        Status::Ok
    }

    /// `proxy_get_metric`: histograms have no single value.
    pub fn get(&self) -> Result<u64, Status> {
        match self.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(self.value.load(Ordering::Relaxed) as u64),
        }
    }

    /// The current value.
    pub fn value(&self) -> MetricValue {
        match (&self.kind, &self.hist) {
            (MetricType::Counter, _) => {
                MetricValue::Counter(self.value.load(Ordering::Relaxed) as u64)
            }
            (MetricType::Gauge, _) => MetricValue::Gauge(self.value.load(Ordering::Relaxed)),
            (MetricType::Histogram, Some(h)) => {
                let period = h.clock.period();
                let mut st = h.state.lock().unwrap_or_else(|e| e.into_inner());
                st.catch_up(period);
                let flushed = FlushedHistogram {
                    used: st.merged,
                    buckets: HISTOGRAM_BUCKETS
                        .iter()
                        .map(|t| circllhist::count_below(&st.cumulative, *t))
                        .collect(),
                    count: st.cumulative.values().sum(),
                    sum: circllhist::approx_sum(&st.cumulative),
                    interval: circllhist::quantiles(&st.interval),
                    cumulative: circllhist::quantiles(&st.cumulative),
                };
                MetricValue::Histogram {
                    count: st.count,
                    sum: st.sum,
                    flushed: Box::new(flushed),
                }
            }
            (MetricType::Histogram, None) => MetricValue::Histogram {
                count: 0,
                sum: 0,
                flushed: Box::new(FlushedHistogram::empty()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_as_envoy_sanitizes_them() {
        assert_eq!(sanitize_stat_name("trace.none."), "trace.none");
        assert_eq!(sanitize_stat_name(".a.b"), "a.b");
        assert_eq!(sanitize_stat_name("a..b"), "a..b");
        assert_eq!(sanitize_stat_name("x://y:/z:w"), "x_y_z_w");
        let m = Metrics::new();
        let (a, _) = m.define(MetricType::Counter, "c.");
        let (b, _) = m.define(MetricType::Counter, "c");
        assert_eq!(a, b, "one metric, as in Envoy");
    }

    #[test]
    fn semantics_follow_envoy() {
        let m = Metrics::new();
        let (cid, c) = m.define(MetricType::Counter, "c");
        let (cid2, _) = m.define(MetricType::Counter, "c");
        assert_eq!(cid, cid2, "redefinition finds the same stat");
        // Envoy's ids: a sequence per kind from 1, the kind in the low bits, never 0.
        assert_eq!(cid, 4);
        assert_eq!(m.define(MetricType::Gauge, "g0").0, 5);
        assert_eq!(m.define(MetricType::Counter, "c2").0, 8);
        assert_eq!(m.get(0).map(|m| m.name.clone()), None);
        let (hid, _) = m.define(MetricType::Histogram, "c");
        assert_ne!(
            hid, cid,
            "a histogram of the same name is another stat (as Envoy's)"
        );
        assert_eq!(c.increment(0), Status::BadArgument);
        assert_eq!(c.increment(-1), Status::BadArgument);
        assert_eq!(c.increment(2), Status::Ok);
        assert_eq!(c.record(3), Status::Ok);
        assert_eq!(c.get(), Ok(5), "record on a counter adds");
        let (gid, g) = m.define(MetricType::Gauge, "g");
        assert_eq!(g.increment(-4), Status::Ok);
        assert_eq!(m.get(gid).map(|g| g.value()), Some(MetricValue::Gauge(-4)));
        g.record(7);
        assert_eq!(g.get(), Ok(7));
        let (_, h) = m.define(MetricType::Histogram, "h");
        assert_eq!(h.increment(1), Status::BadArgument);
        assert_eq!(h.get(), Err(Status::BadArgument));
        h.record(3);
        h.record(20);
        let MetricValue::Histogram {
            count,
            sum,
            flushed,
        } = h.value()
        else {
            panic!("histogram");
        };
        assert_eq!((count, sum), (2, 23), "every sample, at once");
        assert!(
            !flushed.used,
            "nothing flushed yet: Envoy shows no recorded values"
        );
        assert_eq!((flushed.count, flushed.buckets[4]), (0, 0));
        assert!(m.get(cid | 3).is_none(), "kind bits must match");
        assert!(m.get(metric_id(MetricType::Gauge, 9)).is_none());
        assert_eq!(m.snapshot().len(), 6);
    }
}

#[cfg(test)]
mod flush_tests {
    use super::*;

    fn flushed(h: &Metric) -> FlushedHistogram {
        match h.value() {
            MetricValue::Histogram { flushed, .. } => *flushed,
            _ => panic!("histogram"),
        }
    }

    /// Envoy's sequence: samples show after the next flush, as both the last interval and the
    /// cumulative; one flush later the interval is empty and the cumulative stays.
    #[test]
    fn samples_show_after_a_flush() {
        let m = Metrics::new();
        m.set_flush_interval(std::time::Duration::from_millis(200));
        let (_, h) = m.define(MetricType::Histogram, "h");
        let (_, unused) = m.define(MetricType::Histogram, "u");
        // Start just after a flush so the samples fall in one period.
        let p = m.clock.period();
        while m.clock.period() == p {
            std::thread::yield_now();
        }
        h.record(3);
        h.record(20);
        assert!(!flushed(&h).used);
        let p = m.clock.period();
        while m.clock.period() == p {
            std::thread::yield_now();
        }
        let f = flushed(&h);
        assert!(f.used);
        assert_eq!((f.count, f.buckets[2], f.buckets[4]), (2, 1, 2));
        assert_eq!(f.interval, f.cumulative);
        assert_eq!(f.cumulative[0], 3.05);
        let p = m.clock.period();
        while m.clock.period() == p {
            std::thread::yield_now();
        }
        let f = flushed(&h);
        assert!(f.interval.iter().all(|q| q.is_nan()), "{:?}", f.interval);
        assert_eq!((f.count, f.cumulative[0]), (2, 3.05));
        assert!(!flushed(&unused).used, "never recorded: never merged");
        let used: Vec<bool> = m.snapshot_used().into_iter().map(|(_, _, u)| u).collect();
        assert_eq!(used, [true, false]);
    }
}
