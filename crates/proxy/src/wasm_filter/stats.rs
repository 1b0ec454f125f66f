//! Plugin metrics at `/stats` and `/stats/prometheus`: the metrics plugins define (Envoy puts
//! them under the `wasmcustom.` namespace in `/stats` and strips it, with no `envoy_` prefix,
//! in Prometheus output) and per-plugin VM counters (traps, CPU deadline and memory limit hits,
//! reloads).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use wasm_host::{HISTOGRAM_BUCKETS, MetricValue, Metrics, Plugin};

use crate::filter::StatsSource;
use crate::stats::{Store, TagSpecs, labels};

struct CustomMetrics(Arc<Metrics>, TagSpecs);

fn prom_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl StatsSource for CustomMetrics {
    fn append_text(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        for (name, value) in self.0.snapshot() {
            if !keep(&format!("wasmcustom.{name}")) {
                continue;
            }
            match value {
                MetricValue::Counter(v) => {
                    let _ = writeln!(out, "wasmcustom.{name}: {v}");
                }
                MetricValue::Gauge(v) => {
                    let _ = writeln!(out, "wasmcustom.{name}: {v}");
                }
                MetricValue::Histogram { count, sum, .. } => {
                    let _ = writeln!(out, "wasmcustom.{name}: P0(nan,0) count={count} sum={sum}");
                }
            }
        }
    }

    /// Grouped by tag-extracted name (the bootstrap's `stats_tags`), one `# TYPE` line each.
    fn append_prometheus(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        let mut groups: std::collections::BTreeMap<String, (&str, String)> = Default::default();
        let mut metrics = self.0.snapshot();
        // Within a group, samples in the order of their full names (as Envoy sorts them).
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, value) in metrics {
            let flat = format!("wasmcustom.{name}");
            if !keep(&flat) {
                continue;
            }
            let (cut, tags) = self.1.extract(&flat);
            let n = prom_name(cut.strip_prefix("wasmcustom.").unwrap_or(&cut));
            let l = labels(&tags);
            let with = |extra: &str| {
                let inner = l.trim_start_matches('{').trim_end_matches('}');
                match (inner.is_empty(), extra.is_empty()) {
                    (true, true) => "{}".to_string(),
                    (true, false) => format!("{{{extra}}}"),
                    (false, true) => format!("{{{inner}}}"),
                    (false, false) => format!("{{{inner},{extra}}}"),
                }
            };
            let (kind, lines) = match value {
                MetricValue::Counter(v) => ("counter", format!("{n}{} {v}\n", with(""))),
                MetricValue::Gauge(v) => ("gauge", format!("{n}{} {v}\n", with(""))),
                MetricValue::Histogram {
                    buckets,
                    count,
                    sum,
                } => {
                    let mut s = String::new();
                    for (le, c) in HISTOGRAM_BUCKETS.iter().zip(&buckets) {
                        let _ = writeln!(s, "{n}_bucket{} {c}", with(&format!("le=\"{le}\"")));
                    }
                    let _ = write!(
                        s,
                        "{n}_bucket{} {count}\n{n}_sum{} {sum}\n{n}_count{} {count}\n",
                        with("le=\"+Inf\""),
                        with(""),
                        with("")
                    );
                    ("histogram", s)
                }
            };
            let g = groups.entry(n).or_insert((kind, String::new()));
            g.1.push_str(&lines);
        }
        for (n, (kind, lines)) in groups {
            let _ = write!(out, "# TYPE {n} {kind}\n{lines}");
        }
    }
}

struct VmStats(Weak<Plugin>);

impl StatsSource for VmStats {
    fn append_text(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        let Some(p) = self.0.upgrade() else { return };
        let name = &p.config().name;
        let s = p.stats();
        for (stat, v) in [
            ("created", &s.vms_created),
            ("traps", &s.traps),
            ("deadline_exceeded", &s.deadline_exceeded),
            ("memory_exceeded", &s.memory_exceeded),
            ("restarts", &s.restarts),
        ] {
            let flat = format!("wasmesh.wasm.{name}.vm.{stat}");
            if keep(&flat) {
                let _ = writeln!(out, "{flat}: {}", v.load(Ordering::Relaxed));
            }
        }
    }

    fn append_prometheus(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        // No `# TYPE` lines: several plugins share each family, and a repeated TYPE line is
        // invalid exposition; untyped samples are valid.
        let Some(p) = self.0.upgrade() else { return };
        let name = &p.config().name;
        let s = p.stats();
        for (stat, v) in [
            ("created", &s.vms_created),
            ("traps", &s.traps),
            ("deadline_exceeded", &s.deadline_exceeded),
            ("memory_exceeded", &s.memory_exceeded),
            ("restarts", &s.restarts),
        ] {
            if keep(&format!("wasmesh.wasm.{name}.vm.{stat}")) {
                let _ = writeln!(
                    out,
                    "wasmesh_wasm_vm_{stat}{{plugin=\"{name}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// Registers the plugin's VM counters and, once per store, the process's custom metrics.
pub(crate) fn register(store: &Store, plugin: &Arc<Plugin>) {
    static CUSTOM: OnceLock<Mutex<Vec<Arc<dyn StatsSource>>>> = OnceLock::new();
    let hooks = store.hooks();
    let live = hooks.sources();
    let custom = CUSTOM.get_or_init(|| Mutex::new(Vec::new()));
    let mut keep = custom.lock().unwrap_or_else(|e| e.into_inner());
    if !keep.iter().any(|k| live.iter().any(|l| Arc::ptr_eq(k, l))) {
        let src: Arc<dyn StatsSource> = Arc::new(CustomMetrics(
            plugin.runtime().metrics().clone(),
            store.tag_specs().clone(),
        ));
        hooks.register(&src);
        keep.push(src);
    }
    let vm: Arc<dyn StatsSource> = Arc::new(VmStats(Arc::downgrade(plugin)));
    hooks.register(&vm);
    // Keep the VM counters alive as long as the plugin is: leak-free because VmStats only
    // holds a Weak and is tiny.
    keep.push(vm);
}
