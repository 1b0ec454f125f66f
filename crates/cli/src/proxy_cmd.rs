//! `wasmesh proxy`: the data plane, started from an Envoy v3 bootstrap like `envoy -c`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// `wasmesh proxy` (flags follow Envoy's command line).
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// Envoy v3 bootstrap file (YAML or JSON).
    #[arg(short = 'c', long = "config-path", env = "WASMESH_PROXY_CONFIG")]
    config_path: PathBuf,
    /// Number of worker threads (default: the number of cores).
    #[arg(long, env = "WASMESH_PROXY_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Accepted for Envoy compatibility (shared-memory id); unused.
    #[arg(long = "base-id", env = "WASMESH_PROXY_BASE_ID")]
    base_id: Option<u32>,
    /// Log level, as Envoy's `-l` (plugins see it through `proxy_get_log_level`, so their
    /// debug lines show with `-l debug`); `RUST_LOG`, when set, takes precedence.
    #[arg(
        short = 'l',
        long = "log-level",
        env = "WASMESH_PROXY_LOG_LEVEL",
        value_parser = ["trace", "debug", "info", "warning", "warn", "error", "critical", "off"]
    )]
    pub(crate) log_level: Option<String>,
    /// Accepted for Envoy compatibility; unused.
    #[arg(long = "log-format", env = "WASMESH_PROXY_LOG_FORMAT")]
    log_format: Option<String>,
    /// Write the bound admin address (`ip:port`) to this file once started (Envoy's flag).
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
}

/// Runs the proxy until SIGTERM, SIGINT or `POST /quitquitquit`, then drains.
pub(crate) fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = (&args.base_id, &args.log_format);
    wasmesh_proxy::wasm_filter::set_default_fail_reload(args.wasm_default_fail_reload);
    crate::use_compiler_process();
    let bootstrap = wasmesh_proxy::config::bootstrap::load_file(&args.config_path)?;
    let mut opts = wasmesh_proxy::ProxyOptions {
        drain_timeout: Duration::from_secs(args.drain_time_s),
        on_idle: Some(crate::return_free_memory),
        ..Default::default()
    };
    if let Some(n) = args.concurrency {
        opts.concurrency = n.max(1);
    }
    if bootstrap.dynamic_resources.is_some() {
        return proxy_xds(bootstrap, opts, args.admin_address_path);
    }
    let running = wasmesh_proxy::start(&bootstrap, &opts)
        .with_context(|| format!("starting the proxy from {}", args.config_path.display()))?;
    for (name, addr) in running.listener_addrs() {
        tracing::info!(listener = %name, address = %addr, "listening");
    }
    if let Some(admin) = running.admin_addr() {
        tracing::info!(address = %admin, "admin listening");
        if let Some(path) = &args.admin_address_path {
            std::fs::write(path, admin.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
        }
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
    admin_address_path: Option<PathBuf>,
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
                    if let Some(path) = &admin_address_path {
                        let _ = std::fs::write(path, admin.to_string());
                    }
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
