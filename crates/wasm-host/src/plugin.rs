//! A plugin: one compiled module plus one configuration, from which per-worker VMs are made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::properties::NodeInfo;
use crate::runtime::{CompiledModule, Runtime};

/// What to do with streams when the plugin's VM has failed (Envoy `failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Local reply 503 (`wasm_fail_stream`); TCP: close. Envoy's default.
    #[default]
    FailClosed,
    /// Skip the plugin.
    FailOpen,
    /// Create a fresh VM (with backoff) for later requests; fail closed meanwhile.
    FailReload,
}

/// Per-plugin resource limits (Envoy has only the 1 GiB memory cap).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory cap per VM.
    pub max_memory_bytes: usize,
    /// CPU deadline of one callback; an infinite loop is stopped after this.
    pub callback_deadline: Duration,
    /// Deadline for start-up (`_initialize`, `on_vm_start`, `on_configure`).
    pub start_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_bytes: 256 << 20,
            callback_deadline: Duration::from_millis(500),
            start_deadline: Duration::from_secs(10),
        }
    }
}

/// Everything a plugin is configured with (Envoy `PluginConfig` + `VmConfig`).
#[derive(Debug, Clone, Default)]
pub struct PluginConfig {
    /// `PluginConfig.name`
    pub name: String,
    /// `PluginConfig.root_id`
    pub root_id: String,
    /// `VmConfig.vm_id`: also the shared-data and shared-queue namespace.
    pub vm_id: String,
    /// `VmConfig.configuration`, read in `on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// `PluginConfig.configuration`, read in `on_configure`.
    pub configuration: Vec<u8>,
    /// `VmConfig.environment_variables`: the only environment the plugin sees.
    pub env: Vec<(String, String)>,
    pub failure_policy: FailurePolicy,
    pub limits: Limits,
    /// The proxy's node (for `xds.node.*`).
    pub node: Arc<NodeInfo>,
}

impl PluginConfig {
    /// Envoy's log prefix for the plugin's lines: ` <name> <root_id> <vm_id>`, each part only
    /// when set (`Plugin::makeLogPrefix`), as in `wasm log <prefix>: <message>`.
    pub fn log_prefix(&self) -> String {
        prefix(&[&self.name, &self.root_id, &self.vm_id])
    }

    /// The prefix of its root context's lines (`on_vm_start`, `on_configure`, ticks, ...):
    /// ` <root_id> <vm_id>`, as Envoy's `makeRootLogPrefix`.
    pub fn root_log_prefix(&self) -> String {
        prefix(&[&self.root_id, &self.vm_id])
    }
}

fn prefix(parts: &[&String]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| format!(" {p}"))
        .collect()
}

/// Counters about a plugin's VMs (exported as stats by the proxy).
#[derive(Debug, Default)]
pub struct PluginStats {
    pub vms_created: AtomicU64,
    /// VMs alive now.
    pub vms_active: std::sync::atomic::AtomicI64,
    pub traps: AtomicU64,
    pub deadline_exceeded: AtomicU64,
    pub memory_exceeded: AtomicU64,
    /// Reload attempts of a failed VM (FAIL_RELOAD): Envoy's `vm_reload`.
    pub restarts: AtomicU64,
    /// Reloads that gave a working plugin (`vm_reload_success`).
    pub reload_success: AtomicU64,
    /// Reloads that failed (`vm_reload_failure`).
    pub reload_failure: AtomicU64,
    /// Reloads put off by the backoff (`vm_reload_backoff`).
    pub reload_backoff: AtomicU64,
}

impl PluginStats {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A compiled module with its configuration. Cheap to share; make one VM per worker with
/// [`Plugin::instantiate`].
pub struct Plugin {
    pub(crate) runtime: Runtime,
    pub(crate) module: CompiledModule,
    pub(crate) config: PluginConfig,
    pub(crate) stats: Arc<PluginStats>,
    /// Where its `proxy_define_metric` metrics live.
    pub(crate) metrics: Arc<Metrics>,
}

impl Plugin {
    /// Binds a module to a configuration; its metrics go to the runtime's registry.
    pub fn new(runtime: &Runtime, module: CompiledModule, config: PluginConfig) -> Arc<Self> {
        Self::with_metrics(runtime, module, config, runtime.metrics().clone())
    }

    /// Binds a module to a configuration, with its metrics in `metrics` (a proxy's own stats,
    /// as each Envoy server has its stats store).
    pub fn with_metrics(
        runtime: &Runtime,
        module: CompiledModule,
        config: PluginConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime: runtime.clone(),
            module,
            config,
            stats: Arc::default(),
            metrics,
        })
    }

    /// The registry of the metrics it defines.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// The module.
    pub fn module(&self) -> &CompiledModule {
        &self.module
    }

    /// VM counters.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// The VM counters, outliving the plugin (a runtime's totals keep what its dropped
    /// plugins counted).
    pub fn stats_handle(&self) -> Arc<PluginStats> {
        Arc::clone(&self.stats)
    }

    /// The runtime the plugin was compiled in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

/// Exponential backoff for VM reloads (FAIL_RELOAD): 1 s base like Envoy's `ReloadConfig`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        d.min(self.max)
    }

    /// The first delay: Envoy's FAIL_RELOAD waits at least this long after the last load
    /// before reloading a failed VM.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// Back to the base delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let d: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
