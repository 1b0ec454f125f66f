//! Plugin metrics at `/stats` and `/stats/prometheus`: the metrics plugins define (Envoy puts
//! them under the `wasmcustom.` namespace in `/stats` and strips it, with no `envoy_` prefix,
//! in Prometheus output) and per-plugin VM counters (traps, CPU deadline and memory limit hits,
//! reloads).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use wasm_host::{MetricValue, Metrics, Plugin};

use crate::filter::StatsSource;
use crate::stats::histogram::{prometheus_lines, quantile_summary};
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
    fn append_text(&self, out: &mut String, keep: &dyn Fn(&str) -> bool, used_only: bool) {
        for (name, value, used) in self.0.snapshot_used() {
            if !keep(&format!("wasmcustom.{name}")) || (used_only && !used) {
                continue;
            }
            match value {
                MetricValue::Counter(v) => {
                    let _ = writeln!(out, "wasmcustom.{name}: {v}");
                }
                MetricValue::Gauge(v) => {
                    let _ = writeln!(out, "wasmcustom.{name}: {v}");
                }
                MetricValue::Histogram { flushed, .. } => {
                    let _ = writeln!(out, "wasmcustom.{name}: {}", quantile_summary(&flushed));
                }
            }
        }
    }

    /// Grouped by tag-extracted name (the bootstrap's `stats_tags`) and kind, one `# TYPE` line
    /// each.
    fn append_prometheus(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        // By name and kind: a counter and a histogram may share a name (a block each, as Envoy).
        let mut groups: std::collections::BTreeMap<(String, &str), String> = Default::default();
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
                MetricValue::Histogram { flushed, .. } => {
                    let inner = l.trim_start_matches('{').trim_end_matches('}');
                    ("histogram", prometheus_lines(&n, inner, &flushed))
                }
            };
            groups.entry((n, kind)).or_default().push_str(&lines);
        }
        for ((n, kind), lines) in groups {
            let _ = write!(out, "# TYPE {n} {kind}\n{lines}");
        }
    }
}

struct VmStats(Weak<Plugin>, TagSpecs);

impl VmStats {
    /// Envoy's per-plugin reload counters: `wasm.<plugin>.vm_reload{,_success,_failure,_backoff}`.
    fn envoy_counters(p: &Plugin) -> [(String, u64); 4] {
        let name = &p.config().name;
        let s = p.stats();
        let v = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        [
            // Envoy 1.40 never counts `vm_reload` on a FAIL_RELOAD reload (only its success
            // or failure), so neither do we; our attempts are `wasmesh.wasm.<plugin>.vm.restarts`.
            (format!("wasm.{name}.vm_reload"), 0),
            (
                format!("wasm.{name}.vm_reload_backoff"),
                v(&s.reload_backoff),
            ),
            (
                format!("wasm.{name}.vm_reload_failure"),
                v(&s.reload_failure),
            ),
            (
                format!("wasm.{name}.vm_reload_success"),
                v(&s.reload_success),
            ),
        ]
    }
}

impl StatsSource for VmStats {
    fn append_text(&self, out: &mut String, keep: &dyn Fn(&str) -> bool, used_only: bool) {
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
            let v = v.load(Ordering::Relaxed);
            if keep(&flat) && !(used_only && v == 0) {
                let _ = writeln!(out, "{flat}: {v}");
            }
        }
        for (flat, v) in Self::envoy_counters(&p) {
            if keep(&flat) && !(used_only && v == 0) {
                let _ = writeln!(out, "{flat}: {v}");
            }
        }
    }

    fn append_prometheus(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        // Several plugins share each family; the store merges the blocks into one per name.
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
                    "# TYPE wasmesh_wasm_vm_{stat} counter\nwasmesh_wasm_vm_{stat}{{plugin=\"{name}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        for (flat, v) in Self::envoy_counters(&p) {
            if keep(&flat) {
                envoy_sample(out, &self.1, &flat, "counter", v);
            }
        }
    }
}

/// One stat with Envoy's Prometheus naming: `envoy_` + the name the tags leave, the tags as
/// labels (`{}` without), after its `# TYPE` line.
fn envoy_sample(
    out: &mut String,
    tags: &TagSpecs,
    flat: &str,
    kind: &str,
    v: impl std::fmt::Display,
) {
    let (cut, found) = tags.extract(flat);
    let name = format!("envoy_{}", crate::stats::sanitize(&cut));
    let l = if found.is_empty() {
        "{}".to_string()
    } else {
        labels(&found)
    };
    let _ = write!(out, "# TYPE {name} {kind}\n{name}{l} {v}\n");
}

/// Every plugin ever built, by runtime, for Envoy's runtime stats
/// (`wasm.envoy.wasm.runtime.<rt>.created` and `.active`, `wasm.wasm_vm_count`). A dropped
/// plugin's count is folded into its runtime's total, so `created` never goes down.
#[derive(Default)]
struct Runtimes {
    live: Vec<(String, Weak<Plugin>, Arc<wasm_host::PluginStats>)>,
    retired: std::collections::BTreeMap<String, u64>,
}

fn runtimes() -> &'static Mutex<Runtimes> {
    static R: OnceLock<Mutex<Runtimes>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

/// (runtime, created, active) per runtime, and the active total.
fn runtime_totals() -> (Vec<(String, u64, i64)>, i64) {
    let mut r = runtimes().lock().unwrap_or_else(|e| e.into_inner());
    let Runtimes { live, retired } = &mut *r;
    // Envoy also counts its "base" Wasm, the one that holds the compiled module and from
    // which each thread's VM is cloned: our compiled module is that one (one per plugin).
    live.retain(|(rt, plugin, stats)| {
        let alive = plugin.strong_count() > 0;
        if !alive {
            *retired.entry(rt.clone()).or_default() +=
                stats.vms_created.load(Ordering::Relaxed) + 1;
        }
        alive
    });
    let mut by: std::collections::BTreeMap<String, (u64, i64)> =
        retired.iter().map(|(k, v)| (k.clone(), (*v, 0))).collect();
    for (rt, _, stats) in live.iter() {
        let e = by.entry(rt.clone()).or_default();
        e.0 += stats.vms_created.load(Ordering::Relaxed) + 1;
        e.1 += stats.vms_active.load(Ordering::Relaxed) + 1;
    }
    let total = by.values().map(|v| v.1).sum();
    (by.into_iter().map(|(k, (c, a))| (k, c, a)).collect(), total)
}

struct RuntimeStats(TagSpecs);

impl RuntimeStats {
    fn stats() -> Vec<(String, &'static str, i64)> {
        let (per, total) = runtime_totals();
        let mut out = Vec::new();
        for (rt, created, active) in per {
            out.push((format!("wasm.{rt}.active"), "gauge", active));
            out.push((
                format!("wasm.{rt}.created"),
                "counter",
                i64::try_from(created).unwrap_or(i64::MAX),
            ));
        }
        out.push(("wasm.wasm_vm_count".to_string(), "gauge", total));
        out
    }
}

impl StatsSource for RuntimeStats {
    fn append_text(&self, out: &mut String, keep: &dyn Fn(&str) -> bool, used_only: bool) {
        for (flat, _, v) in Self::stats() {
            if keep(&flat) && !(used_only && v == 0) {
                let _ = writeln!(out, "{flat}: {v}");
            }
        }
    }

    fn append_prometheus(&self, out: &mut String, keep: &dyn Fn(&str) -> bool) {
        for (flat, kind, v) in Self::stats() {
            if keep(&flat) {
                envoy_sample(out, &self.0, &flat, kind, v);
            }
        }
    }
}

/// Registers the plugin's VM counters and, once per store, the process's custom metrics and
/// runtime stats. `runtime` is the configured `vm_config.runtime` (Envoy's stats are named
/// after it; empty means Envoy's default, V8).
pub(crate) fn register(store: &Store, plugin: &Arc<Plugin>, runtime: &str) {
    let rt = if runtime.is_empty() {
        "envoy.wasm.runtime.v8"
    } else {
        runtime
    };
    runtimes()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .live
        .push((
            rt.to_string(),
            Arc::downgrade(plugin),
            plugin.stats_handle(),
        ));
    static CUSTOM: OnceLock<Mutex<Vec<Arc<dyn StatsSource>>>> = OnceLock::new();
    let hooks = store.hooks();
    let live = hooks.sources();
    let custom = CUSTOM.get_or_init(|| Mutex::new(Vec::new()));
    let mut keep = custom.lock().unwrap_or_else(|e| e.into_inner());
    if !keep.iter().any(|k| live.iter().any(|l| Arc::ptr_eq(k, l))) {
        let src: Arc<dyn StatsSource> = Arc::new(CustomMetrics(
            store.plugin_metrics().clone(),
            store.tag_specs().clone(),
        ));
        hooks.register(&src);
        keep.push(src);
        let rts: Arc<dyn StatsSource> = Arc::new(RuntimeStats(store.tag_specs().clone()));
        hooks.register(&rts);
        keep.push(rts);
    }
    let vm: Arc<dyn StatsSource> =
        Arc::new(VmStats(Arc::downgrade(plugin), store.tag_specs().clone()));
    hooks.register(&vm);
    // Keep the VM counters alive as long as the plugin is: leak-free because VmStats only
    // holds a Weak and is tiny.
    keep.push(vm);
}
