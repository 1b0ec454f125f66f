//! Plugin metrics at `/stats` and `/stats/prometheus`: the metrics plugins define (Envoy puts
//! them under the `wasmcustom.` namespace in `/stats` and strips it, with no `envoy_` prefix,
//! in Prometheus output) and per-plugin VM counters (traps, CPU deadline and memory limit hits,
//! reloads).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use wasm_host::{HISTOGRAM_BUCKETS, MetricValue, Metrics, Plugin};

use crate::filter::StatsSource;
use crate::stats::Store;

struct CustomMetrics(Arc<Metrics>);

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
    fn append_text(&self, out: &mut String) {
        for (name, value) in self.0.snapshot() {
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

    fn append_prometheus(&self, out: &mut String) {
        for (name, value) in self.0.snapshot() {
            let n = prom_name(&name);
            match value {
                MetricValue::Counter(v) => {
                    let _ = write!(out, "# TYPE {n} counter\n{n}{{}} {v}\n");
                }
                MetricValue::Gauge(v) => {
                    let _ = write!(out, "# TYPE {n} gauge\n{n}{{}} {v}\n");
                }
                MetricValue::Histogram {
                    buckets,
                    count,
                    sum,
                } => {
                    let _ = writeln!(out, "# TYPE {n} histogram");
                    for (le, c) in HISTOGRAM_BUCKETS.iter().zip(&buckets) {
                        let _ = writeln!(out, "{n}_bucket{{le=\"{le}\"}} {c}");
                    }
                    let _ = write!(
                        out,
                        "{n}_bucket{{le=\"+Inf\"}} {count}\n{n}_sum{{}} {sum}\n{n}_count{{}} {count}\n"
                    );
                }
            }
        }
    }
}

struct VmStats(Weak<Plugin>);

impl StatsSource for VmStats {
    fn append_text(&self, out: &mut String) {
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
            let _ = writeln!(
                out,
                "wasmesh.wasm.{name}.vm.{stat}: {}",
                v.load(Ordering::Relaxed)
            );
        }
    }

    fn append_prometheus(&self, out: &mut String) {
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
            let _ = writeln!(
                out,
                "wasmesh_wasm_vm_{stat}{{plugin=\"{name}\"}} {}",
                v.load(Ordering::Relaxed)
            );
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
        let src: Arc<dyn StatsSource> = Arc::new(CustomMetrics(plugin.runtime().metrics().clone()));
        hooks.register(&src);
        keep.push(src);
    }
    let vm: Arc<dyn StatsSource> = Arc::new(VmStats(Arc::downgrade(plugin)));
    hooks.register(&vm);
    // Keep the VM counters alive as long as the plugin is: leak-free because VmStats only
    // holds a Weak and is tiny.
    keep.push(vm);
}
