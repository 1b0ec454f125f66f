//! `wasmesh control-plane` and `wasmesh validate`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wasmesh_control_plane::source::validate_path;
use wasmesh_control_plane::{ControlPlane, Settings};

/// Default ADS port (istiod's plaintext xDS port).
pub(crate) const DEFAULT_XDS_ADDR: &str = "127.0.0.1:15010";

/// `wasmesh control-plane`.
#[derive(Debug, Args)]
pub(crate) struct ControlPlaneArgs {
    /// Directory of Istio YAML files (WasmPlugin, ServiceEntry, Gateway, VirtualService, Sidecar, Secret); watched.
    #[arg(long, env = "WASMESH_CONFIG_DIR")]
    config_dir: PathBuf,
    /// ADS (gRPC) listen address.
    #[arg(long, env = "WASMESH_XDS_ADDR", default_value = DEFAULT_XDS_ADDR)]
    xds_addr: SocketAddr,
    /// Istio root namespace: its WasmPlugins apply to every namespace.
    #[arg(long, env = "WASMESH_ROOT_NAMESPACE", default_value = "istio-system")]
    root_namespace: String,
    /// Debug status endpoint (`/debug/config_status`: per-file errors; `/debug/syncz`: per-proxy
    /// acked/nacked versions), like istiod's 15014. Off unless set.
    #[arg(long, env = "WASMESH_STATUS_ADDR")]
    status_addr: Option<SocketAddr>,
}

/// `wasmesh validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// A YAML file or a directory of them.
    path: PathBuf,
}

pub(crate) fn control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async {
        let mut settings = Settings::new(&args.config_dir, args.xds_addr);
        settings.root_namespace = args.root_namespace;
        settings.status_addr = args.status_addr;
        let cp = ControlPlane::start(settings).await?;
        tracing::info!(addr = %cp.addr, dir = %args.config_dir.display(), "control plane serving ADS");
        tokio::select! {
            _ = cp.wait() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
        }
        Ok(())
    })
}

pub(crate) fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let results = validate_path(&args.path)?;
    let mut errors = 0;
    for (file, parsed) in &results {
        for w in &parsed.warnings {
            println!("warning: {w}");
        }
        if parsed.errors.is_empty() {
            println!(
                "ok: {} ({} resources)",
                file.display(),
                parsed.resources.len()
            );
        }
        for e in &parsed.errors {
            println!("error: {e}");
            errors += 1;
        }
    }
    if errors > 0 {
        anyhow::bail!("{errors} error(s) in {}", args.path.display());
    }
    Ok(())
}
