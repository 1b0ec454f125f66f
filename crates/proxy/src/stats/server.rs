//! The server's own stats, with Envoy's names: `server.state`, `server.live`,
//! `listener_manager.workers_started`, the xDS update counters (`cluster_manager.cds.*`,
//! `listener_manager.lds.*`). istio-agent's readiness probe reads exactly these through
//! `/stats?usedonly&filter=...`: the proxy is ready when `server.state` is 0 (LIVE),
//! `listener_manager.workers_started` is 1 and CDS and LDS each had a successful update.

use std::time::Instant;

use super::{Counter, Gauge, Store};

/// Envoy's `envoy.admin.v3.ServerInfo.State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Serving.
    Live = 0,
    /// Draining listeners.
    Draining = 1,
    /// Started, configuration not yet initialized (waiting for xDS).
    PreInitializing = 2,
    /// Initializing (clusters, listeners warming).
    Initializing = 3,
}

impl ServerState {
    /// The name `/ready` prints.
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
        }
    }

    fn from_gauge(v: i64) -> Self {
        match v {
            0 => ServerState::Live,
            1 => ServerState::Draining,
            3 => ServerState::Initializing,
            _ => ServerState::PreInitializing,
        }
    }
}

/// Counters of one xDS type (`cluster_manager.cds.*`, `listener_manager.lds.*`).
#[derive(Debug, Clone)]
pub struct XdsUpdateStats {
    /// `update_attempt`: responses received.
    pub attempt: Counter,
    /// `update_success`: responses applied (ACK).
    pub success: Counter,
    /// `update_rejected`: responses rejected (NACK).
    pub rejected: Counter,
}

impl XdsUpdateStats {
    fn new(store: &Store, prefix: &str) -> Self {
        let c = |n: &str| {
            let flat = format!("{prefix}.{n}");
            store.counter(&flat, &format!("envoy_{}", super::sanitize(&flat)), &[])
        };
        Self {
            attempt: c("update_attempt"),
            success: c("update_success"),
            rejected: c("update_rejected"),
        }
    }
}

/// The server-wide stats of one proxy.
#[derive(Debug, Clone)]
pub struct ServerStats {
    state: Gauge,
    live: Gauge,
    /// `server.concurrency`: worker threads.
    pub concurrency: Gauge,
    uptime: Gauge,
    /// `listener_manager.workers_started`: 1 once the workers accept connections.
    pub workers_started: Gauge,
    /// `listener_manager.total_listeners_active`.
    pub listeners_active: Gauge,
    /// `cluster_manager.active_clusters`.
    pub clusters_active: Gauge,
    /// `cluster_manager.cds.*`.
    pub cds: XdsUpdateStats,
    /// `listener_manager.lds.*`.
    pub lds: XdsUpdateStats,
    started: Instant,
}

impl ServerStats {
    /// The stats in `store` (the same handles each time: the store keeps them by name).
    pub fn new(store: &Store) -> Self {
        let g = |flat: &str| store.gauge(flat, &format!("envoy_{}", super::sanitize(flat)), &[]);
        Self {
            state: g("server.state"),
            live: g("server.live"),
            concurrency: g("server.concurrency"),
            uptime: g("server.uptime"),
            workers_started: g("listener_manager.workers_started"),
            listeners_active: g("listener_manager.total_listeners_active"),
            clusters_active: g("cluster_manager.active_clusters"),
            cds: XdsUpdateStats::new(store, "cluster_manager.cds"),
            lds: XdsUpdateStats::new(store, "listener_manager.lds"),
            started: Instant::now(),
        }
    }

    /// Sets `server.state` (and `server.live`, 1 when LIVE).
    pub fn set_state(&self, s: ServerState) {
        self.state.set(s as i64);
        self.live.set(i64::from(s == ServerState::Live));
    }

    /// The current `server.state`.
    pub fn state(&self) -> ServerState {
        ServerState::from_gauge(self.state.get())
    }

    /// `listener_manager.total_listeners_active` and `cluster_manager.active_clusters` for a
    /// config being served.
    pub fn set_sizes(&self, listeners: usize, clusters: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.listeners_active.set(n(listeners));
        self.clusters_active.set(n(clusters));
    }

    /// Time since the server started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Brings `server.uptime` (seconds since start) up to date; called before rendering.
    pub fn touch_uptime(&self) {
        self.uptime
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines istio-agent's readiness probe parses, under Envoy's names.
    #[test]
    fn readiness_stats_have_envoys_names() {
        let store = Store::new();
        let s = ServerStats::new(&store);
        s.set_state(ServerState::PreInitializing);
        assert_eq!(s.state(), ServerState::PreInitializing);
        let text = store.render_text();
        assert!(text.contains("server.state: 2\n"), "{text}");
        assert!(text.contains("server.live: 0\n"), "{text}");
        s.set_state(ServerState::Live);
        s.workers_started.set(1);
        s.cds.success.inc();
        let text = store.render_text();
        assert!(text.contains("server.state: 0\n"), "{text}");
        assert!(text.contains("server.live: 1\n"), "{text}");
        assert!(
            text.contains("listener_manager.workers_started: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cluster_manager.cds.update_success: 1\n"),
            "{text}"
        );
        let prom = store.render_prometheus();
        assert!(prom.contains("envoy_server_state{} 0\n"), "{prom}");
        assert!(
            prom.contains("envoy_cluster_manager_cds_update_success{} 1\n"),
            "{prom}"
        );
    }
}
