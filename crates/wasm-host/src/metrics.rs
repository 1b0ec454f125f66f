//! Plugin-defined metrics (`proxy_define_metric` & co), shared by every VM in the process.
//! The proxy reads them with [`Metrics::snapshot`] for `/stats` and `/stats/prometheus`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::abi::{MetricType, Status};

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
    hist: Option<Histogram>,
}

#[derive(Debug)]
struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
    /// Envoy's sum (f64 bits): each value counted as its log-linear bin's representative.
    approx_sum: AtomicU64,
}

/// What Envoy's histogram (libcircllhist: two significant digits per bin) counts `v` as in its
/// sum: the bin's lower edge `l` plus `w·l/(l+r)` for width `w` and upper edge `r` (checked
/// against Envoy 1.40's `_sum` output to the last digit).
pub fn envoy_bin_value(v: u64) -> f64 {
    if v == 0 {
        return 0.0;
    }
    let digits = v.ilog10() + 1;
    let (val, exp) = if digits == 1 {
        (v * 10, 0i32)
    } else {
        (
            v / 10u64.pow(digits - 2),
            i32::try_from(digits).unwrap_or(i32::MAX) - 1,
        )
    };
    // circllhist keeps a table of correctly rounded powers of ten.
    let pow10 = |e: i32| format!("1e{e}").parse::<f64>().unwrap_or(f64::NAN);
    let l = val as f64 / 10.0 * pow10(exp);
    let w = pow10(exp - 1);
    let r = l + w;
    l + w * l / (l + r)
}

/// A metric's value at one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Counter(u64),
    Gauge(i64),
    /// Cumulative counts per [`HISTOGRAM_BUCKETS`] bound, total count and sum (exact, and as
    /// Envoy's histogram approximates it).
    Histogram {
        buckets: Vec<u64>,
        count: u64,
        sum: u64,
        approx_sum: f64,
    },
}

/// All plugin metrics of a process.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: RwLock<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// By kind and name: a counter and a histogram may share a name (Envoy keeps them apart).
    by_name: HashMap<(MetricType, String), usize>,
    all: Vec<Arc<Metric>>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Defines (or finds) a metric; the id encodes the kind in its low 2 bits like cpp-host.
    pub fn define(&self, kind: MetricType, name: &str) -> (u32, Arc<Metric>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&idx) = g.by_name.get(&(kind, name.to_string())) {
            let m = g.all[idx].clone();
            return (((idx as u32) << 2) | m.kind as u32, m);
        }
        let hist = (kind == MetricType::Histogram).then(|| Histogram {
            buckets: HISTOGRAM_BUCKETS
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            approx_sum: AtomicU64::new(0f64.to_bits()),
        });
        let m = Arc::new(Metric {
            name: name.to_string(),
            kind,
            value: AtomicI64::new(0),
            hist,
        });
        let idx = g.all.len();
        g.all.push(m.clone());
        g.by_name.insert((kind, name.to_string()), idx);
        (((idx as u32) << 2) | kind as u32, m)
    }

    /// The metric behind an id.
    pub fn get(&self, id: u32) -> Option<Arc<Metric>> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.all
            .get((id >> 2) as usize)
            .filter(|m| m.kind as u32 == id & 3)
            .cloned()
    }

    /// Every metric's name, kind and value, in definition order.
    pub fn snapshot(&self) -> Vec<(String, MetricValue)> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.all.iter().map(|m| (m.name.clone(), m.value())).collect()
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

    /// `proxy_increment_metric`: counters take positive deltas only, histograms none.
    pub fn increment(&self, delta: i64) -> Status {
        match self.kind {
            MetricType::Counter if delta > 0 => {
                self.value.fetch_add(delta, Ordering::Relaxed);
                Status::Ok
            }
            MetricType::Gauge => {
                self.value.fetch_add(delta, Ordering::Relaxed);
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
                    let v = value as f64;
                    if let Some(i) = HISTOGRAM_BUCKETS.iter().position(|b| v <= *b) {
                        h.buckets[i].fetch_add(1, Ordering::Relaxed);
                    }
                    h.count.fetch_add(1, Ordering::Relaxed);
                    h.sum.fetch_add(value, Ordering::Relaxed);
                    let add = envoy_bin_value(value);
                    let _ =
                        h.approx_sum
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                                Some((f64::from_bits(bits) + add).to_bits())
                            });
                }
            }
        }
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
                let mut acc = 0;
                let buckets = h
                    .buckets
                    .iter()
                    .map(|b| {
                        acc += b.load(Ordering::Relaxed);
                        acc
                    })
                    .collect();
                MetricValue::Histogram {
                    buckets,
                    count: h.count.load(Ordering::Relaxed),
                    sum: h.sum.load(Ordering::Relaxed),
                    approx_sum: f64::from_bits(h.approx_sum.load(Ordering::Relaxed)),
                }
            }
            (MetricType::Histogram, None) => MetricValue::Histogram {
                buckets: vec![],
                count: 0,
                sum: 0,
                approx_sum: 0.0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantics_follow_envoy() {
        let m = Metrics::new();
        let (cid, c) = m.define(MetricType::Counter, "c");
        let (cid2, _) = m.define(MetricType::Counter, "c");
        assert_eq!(cid, cid2, "redefinition finds the same stat");
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
            buckets,
            count,
            sum,
            ..
        } = h.value()
        else {
            panic!("histogram");
        };
        assert_eq!((count, sum), (2, 23));
        assert_eq!(buckets[2], 1, "3 <= 5");
        assert_eq!(buckets[4], 2, "20 <= 25, cumulative");
        assert!(m.get(cid + 1).is_none(), "kind bits must match");
        // Envoy 1.40 prints 3.0491803278688522915729208762059 for one 3, and 9.1475... for
        // three: the bin [3.0, 3.1)'s value.
        assert_eq!(
            format!("{:.31e}", envoy_bin_value(3)),
            "3.0491803278688522915729208762059e0"
        );
        assert_eq!(envoy_bin_value(0), 0.0);
        let v = envoy_bin_value(123);
        assert!((120.0..130.0).contains(&v), "{v}");
        assert_eq!(m.snapshot().len(), 4);
    }
}
