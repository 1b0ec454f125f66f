//! `wasmesh control-plane` and `wasmesh validate`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use wasmesh_control_plane::source::validate_path;
use wasmesh_control_plane::{ControlPlane, Settings, SourceSettings};

/// Default ADS port (istiod's plaintext xDS port).
pub(crate) const DEFAULT_XDS_ADDR: &str = "127.0.0.1:15010";

/// Where `wasmesh control-plane` reads config from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SourceKind {
    /// `--config-dir`: a directory of YAML files.
    Directory,
    /// The Kubernetes API server (binaries built with `--features kubernetes`).
    Kubernetes,
}

/// `wasmesh control-plane`.
#[derive(Debug, Args)]
pub(crate) struct ControlPlaneArgs {
    /// Directory of Istio YAML files (WasmPlugin, ServiceEntry, Gateway, VirtualService, Sidecar, Secret); watched.
    #[arg(long, env = "WASMESH_CONFIG_DIR", required_unless_present_any = ["source", "kubeconfig"])]
    config_dir: Option<PathBuf>,
    /// Config source. Default: `directory`, or `kubernetes` when `--kubeconfig` is given.
    #[arg(long, env = "WASMESH_SOURCE", value_enum)]
    source: Option<SourceKind>,
    /// Kubernetes: kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    /// Implies `--source kubernetes`.
    #[arg(long, env = "WASMESH_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: kubeconfig context (default: the current one).
    #[arg(long, env = "WASMESH_KUBE_CONTEXT")]
    kube_context: Option<String>,
    /// Kubernetes: only watch this namespace (default: all, as istiod).
    #[arg(long, env = "WASMESH_KUBE_NAMESPACE")]
    kube_namespace: Option<String>,
    /// Kubernetes: networking.istio.io version to watch (`v1`, Istio >= 1.22; `v1beta1` before).
    #[arg(long, env = "WASMESH_KUBE_NETWORKING_VERSION", default_value = "v1")]
    kube_networking_version: String,
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
    // One rustls provider for the Kubernetes client (kube and the rest use aws-lc-rs).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async {
        let (source, from) = source_settings(&args)?;
        let mut settings = Settings::with_source(source, args.xds_addr);
        settings.root_namespace = args.root_namespace;
        settings.status_addr = args.status_addr;
        let cp = ControlPlane::start(settings).await?;
        tracing::info!(addr = %cp.addr, source = %from, "control plane serving ADS");
        tokio::select! {
            _ = cp.wait() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
        }
        Ok(())
    })
}

/// The source the flags ask for, and how to name it in the log.
fn source_settings(args: &ControlPlaneArgs) -> anyhow::Result<(SourceSettings, String)> {
    let kind = args.source.unwrap_or(if args.kubeconfig.is_some() {
        SourceKind::Kubernetes
    } else {
        SourceKind::Directory
    });
    match kind {
        SourceKind::Directory => {
            if args.kubeconfig.is_some() {
                anyhow::bail!("--kubeconfig needs --source kubernetes (not directory)");
            }
            let dir = args
                .config_dir
                .clone()
                .context("--source directory needs --config-dir")?;
            let from = dir.display().to_string();
            Ok((SourceSettings::Directory(dir), from))
        }
        SourceKind::Kubernetes => kubernetes_settings(args),
    }
}

#[cfg(feature = "kubernetes")]
fn kubernetes_settings(args: &ControlPlaneArgs) -> anyhow::Result<(SourceSettings, String)> {
    use wasmesh_control_plane::source::kubernetes::KubernetesSettings;
    if args.config_dir.is_some() {
        anyhow::bail!("--config-dir and the Kubernetes source are exclusive; pass one");
    }
    let k = KubernetesSettings {
        kubeconfig: args.kubeconfig.clone(),
        context: args.kube_context.clone(),
        namespace: args.kube_namespace.clone(),
        networking_version: args.kube_networking_version.clone(),
        ..Default::default()
    };
    let from = match &k.kubeconfig {
        Some(p) => format!("kubernetes ({})", p.display()),
        None => "kubernetes".to_string(),
    };
    Ok((SourceSettings::Kubernetes(k), from))
}

#[cfg(not(feature = "kubernetes"))]
fn kubernetes_settings(_: &ControlPlaneArgs) -> anyhow::Result<(SourceSettings, String)> {
    anyhow::bail!(
        "this wasmesh binary was built without Kubernetes support; rebuild it with          `cargo build -p wasmesh --features kubernetes`, or use --config-dir"
    )
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControlPlaneArgs,
    }

    fn parse(args: &[&str]) -> ControlPlaneArgs {
        Cli::try_parse_from(std::iter::once("control-plane").chain(args.iter().copied()))
            .expect("flags parse")
            .args
    }

    #[test]
    fn the_directory_is_the_default_source() {
        let (s, _) = source_settings(&parse(&["--config-dir", "/x"])).expect("settings");
        assert!(matches!(s, SourceSettings::Directory(d) if d == Path::new("/x")));
        let e = source_settings(&parse(&["--source", "directory"])).expect_err("no dir");
        assert!(e.to_string().contains("needs --config-dir"), "{e}");
    }

    #[cfg(not(feature = "kubernetes"))]
    #[test]
    fn kubernetes_flags_say_the_binary_lacks_kubernetes_support() {
        for args in [&["--source", "kubernetes"][..], &["--kubeconfig", "/k"]] {
            let e = source_settings(&parse(args)).expect_err("no kubernetes");
            assert!(
                e.to_string().contains("built without Kubernetes support"),
                "{e}"
            );
        }
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn a_kubeconfig_implies_the_kubernetes_source() {
        let (s, _) = source_settings(&parse(&["--kubeconfig", "/k", "--kube-namespace", "app"]))
            .expect("settings");
        let SourceSettings::Kubernetes(k) = s else {
            panic!("not the Kubernetes source")
        };
        assert_eq!(k.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert_eq!(k.namespace.as_deref(), Some("app"));
        assert_eq!(k.networking_version, "v1");
        let e = source_settings(&parse(&["--kubeconfig", "/k", "--config-dir", "/x"]))
            .expect_err("exclusive");
        assert!(e.to_string().contains("exclusive"), "{e}");
    }
}
