//! `wasmesh proxy`: the data plane, started from an Envoy v3 bootstrap like `envoy -c`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// `wasmesh proxy` (flags follow Envoy's command line, so istio-agent can start wasmesh with
/// the arguments it gives Envoy).
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// Envoy v3 bootstrap file (YAML or JSON).
    #[arg(
        short = 'c',
        long = "config-path",
        env = "WASMESH_PROXY_CONFIG",
        required_unless_present = "config_yaml"
    )]
    config_path: Option<PathBuf>,
    /// Bootstrap YAML or JSON merged over the file (Envoy's `--config-yaml`: scalars replaced,
    /// messages merged, lists appended).
    #[arg(long = "config-yaml")]
    config_yaml: Option<String>,
    /// Ignore unknown fields in the bootstrap instead of refusing it (Envoy's flag; istio-agent
    /// passes it).
    #[arg(long = "allow-unknown-static-fields")]
    allow_unknown_static_fields: bool,
    /// `serve` runs the proxy; `validate` checks the bootstrap and exits (0 when it is good).
    #[arg(long, default_value = "serve", value_parser = ["serve", "validate"])]
    mode: String,
    /// Number of worker threads (default: the number of cores).
    #[arg(long, env = "WASMESH_PROXY_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Log level, as Envoy's `-l` (plugins see it through `proxy_get_log_level`, so their
    /// debug lines show with `-l debug`); `RUST_LOG`, when set, takes precedence.
    #[arg(
        short = 'l',
        long = "log-level",
        env = "WASMESH_PROXY_LOG_LEVEL",
        value_parser = ["trace", "debug", "info", "warning", "warn", "error", "critical", "off"]
    )]
    pub(crate) log_level: Option<String>,
    /// Log line format, an spdlog pattern as Envoy's `--log-format` (default Envoy's
    /// `[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`; times in UTC).
    #[arg(long = "log-format", env = "WASMESH_PROXY_LOG_FORMAT")]
    log_format: Option<String>,
    /// Write logs to this file instead of stderr (Envoy's `--log-path`).
    #[arg(long = "log-path")]
    pub(crate) log_path: Option<PathBuf>,
    /// Overrides the bootstrap's `node.id` (Envoy's `--service-node`).
    #[arg(long = "service-node")]
    service_node: Option<String>,
    /// Overrides the bootstrap's `node.cluster` (Envoy's `--service-cluster`).
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,
    /// Write the bound admin address (`ip:port`) to this file once the admin API listens
    /// (Envoy's flag).
    #[arg(long = "admin-address-path", env = "WASMESH_PROXY_ADMIN_ADDRESS_PATH")]
    admin_address_path: Option<PathBuf>,
    /// Seconds to let in-flight requests finish on SIGTERM or /quitquitquit.
    #[arg(
        long = "drain-time-s",
        env = "WASMESH_PROXY_DRAIN_TIME_S",
        default_value_t = 5
    )]
    drain_time_s: u64,
    /// Plugins with no failure_policy reload their VM (with backoff) after a crash instead of
    /// failing closed forever (Envoy's default; envoy#16726).
    #[arg(
        long = "wasm-default-fail-reload",
        env = "WASMESH_WASM_DEFAULT_FAIL_RELOAD"
    )]
    wasm_default_fail_reload: bool,
    #[command(flatten)]
    envoy: EnvoyOnly,
}

impl ProxyArgs {
    /// The `--log-format` pattern, if given.
    pub(crate) fn log_format(&self) -> Option<&str> {
        self.log_format.as_deref()
    }
}

/// Envoy flags accepted and without effect here, so command lines written for Envoy (such as
/// istio-agent's) start wasmesh unchanged.
#[derive(Debug, Args)]
#[command(next_help_heading = "Accepted for Envoy compatibility (no effect)")]
struct EnvoyOnly {
    /// Envoy's shared-memory id (no hot restart here).
    #[arg(long = "base-id", env = "WASMESH_PROXY_BASE_ID")]
    base_id: Option<u32>,
    /// Envoy's per-component log levels (`misc:error,...`).
    #[arg(long = "component-log-level")]
    component_log_level: Option<String>,
    /// Envoy's drain strategy (draining here always lets streams finish).
    #[arg(long = "drain-strategy", value_parser = ["gradual", "immediate"])]
    drain_strategy: Option<String>,
    /// Envoy's hot-restart parent shutdown time.
    #[arg(long = "parent-shutdown-time-s")]
    parent_shutdown_time_s: Option<u64>,
    /// Envoy's hot-restart epoch.
    #[arg(long = "restart-epoch")]
    restart_epoch: Option<u32>,
    /// Envoy's local address family.
    #[arg(long = "local-address-ip-version", value_parser = ["v4", "v6"])]
    local_address_ip_version: Option<String>,
    /// Envoy's access log flush interval (access log lines are written as they happen here).
    #[arg(long = "file-flush-interval-msec")]
    file_flush_interval_msec: Option<u64>,
    /// Envoy's hot-restart switch (there is no hot restart here).
    #[arg(long = "disable-hot-restart")]
    disable_hot_restart: bool,
    /// Envoy's switch to skip deprecated-field warnings.
    #[arg(long = "skip-deprecated-logs")]
    skip_deprecated_logs: bool,
    /// Envoy's switch to escape log lines.
    #[arg(long = "log-format-escaped")]
    log_format_escaped: bool,
    /// Envoy's service zone.
    #[arg(long = "service-zone")]
    service_zone: Option<String>,
}

/// Envoy's command line, for an executable named `envoy`: `wasmesh` installed (or linked) as
/// `envoy` takes Envoy's arguments as `wasmesh proxy` does, so istio-agent (or any tool that
/// runs Envoy) runs it unchanged. Our own compiler child (`compile-wasm`) is left alone.
pub(crate) fn envoy_argv(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let named_envoy = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "envoy");
    let own_command = args.get(1).is_some_and(|a| a == "compile-wasm");
    if !named_envoy || own_command {
        return args;
    }
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut it = args.into_iter();
    out.extend(it.next());
    out.push("proxy".into());
    out.extend(it);
    out
}

/// Runs the proxy until SIGTERM, SIGINT or `POST /quitquitquit`, then drains.
pub(crate) fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = &args.envoy;
    wasmesh_proxy::wasm_filter::set_default_fail_reload(args.wasm_default_fail_reload);
    crate::use_compiler_process();
    let source = match (&args.config_path, &args.config_yaml) {
        (Some(p), _) => p.display().to_string(),
        (None, _) => "--config-yaml".to_string(),
    };
    let mut bootstrap = wasmesh_proxy::config::bootstrap::load_merged(
        args.config_path.as_deref(),
        args.config_yaml.as_deref(),
        args.allow_unknown_static_fields,
    )
    .with_context(|| format!("loading {source}"))?;
    if args.service_node.is_some() || args.service_cluster.is_some() {
        let node = bootstrap.node.get_or_insert_with(Default::default);
        if let Some(id) = &args.service_node {
            node.id.clone_from(id);
        }
        if let Some(c) = &args.service_cluster {
            node.cluster.clone_from(c);
        }
    }
    if args.mode == "validate" {
        return validate(&bootstrap, &source);
    }
    let mut opts = wasmesh_proxy::ProxyOptions {
        drain_timeout: Duration::from_secs(args.drain_time_s),
        on_idle: Some(crate::return_free_memory),
        admin_address_path: args.admin_address_path.clone(),
        ..Default::default()
    };
    if let Some(n) = args.concurrency {
        opts.concurrency = n.max(1);
    }
    if bootstrap.dynamic_resources.is_some() {
        return proxy_xds(bootstrap, opts);
    }
    let running = wasmesh_proxy::start(&bootstrap, &opts)
        .with_context(|| format!("starting the proxy from {source}"))?;
    for (name, addr) in running.listener_addrs() {
        tracing::info!(listener = %name, address = %addr, "listening");
    }
    if let Some(admin) = running.admin_addr() {
        tracing::info!(address = %admin, "admin listening");
    }
    tracing::info!(workers = opts.concurrency, "proxy started");
    // The config is built: the Envoy API descriptors (~50 MiB) are not needed to serve.
    wasmesh_xds::release_descriptor_pool();
    let quit = running.quit_requested();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            _ = quit.notified() => tracing::info!("/quitquitquit: draining"),
        }
        anyhow::Ok(())
    })?;
    running.shutdown();
    tracing::info!("proxy stopped");
    Ok(())
}

/// The proxy configured over ADS: serves once the first complete config arrived, swaps every
/// later one in place; stops on SIGTERM/SIGINT.
fn proxy_xds(
    bootstrap: wasmesh_proxy::pb::bootstrap::Bootstrap,
    opts: wasmesh_proxy::ProxyOptions,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (started_tx, started_rx) =
            tokio::sync::oneshot::channel::<wasmesh_proxy::xds::Started>();
        let stop = async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            }
        };
        let report = async move {
            if let Ok(Ok((listeners, admin))) = started_rx.await {
                for (name, addr) in listeners {
                    tracing::info!(listener = %name, address = %addr, "listening");
                }
                if let Some(admin) = admin {
                    tracing::info!(address = %admin, "admin listening");
                }
            }
        };
        let (res, ()) = tokio::join!(
            wasmesh_proxy::xds::run(bootstrap, opts, started_tx, stop),
            report
        );
        res.context("xDS")
    })?;
    tracing::info!("proxy stopped");
    Ok(())
}

/// `--mode validate`: builds the config as `serve` would (a bootstrap with `dynamic_resources`:
/// its static part) without binding anything, and says so as Envoy does.
fn validate(
    bootstrap: &wasmesh_proxy::pb::bootstrap::Bootstrap,
    source: &str,
) -> anyhow::Result<()> {
    let mut b = bootstrap.clone();
    if b.dynamic_resources.take().is_some() {
        wasmesh_proxy::xds::strip_ads_clusters(&mut b);
    }
    wasmesh_proxy::config::build(&b, &wasmesh_proxy::config::BuildOptions::default())
        .with_context(|| format!("configuration '{source}' is invalid"))?;
    println!("configuration '{source}' OK");
    Ok(())
}
