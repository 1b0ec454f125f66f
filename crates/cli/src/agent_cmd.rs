//! `wasmesh agent`: istio-agent's Wasm role (xDS proxy with Wasm module fetch and cache).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wasmesh_agent::fetch::InsecureRegistries;
use wasmesh_agent::fetch::ssrf::IpNet;
use wasmesh_agent::{Agent, AgentConfig, ListenAddr};

/// `wasmesh agent`.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// Where the proxy's bootstrap points: `host:port` or `unix:/path`.
    #[arg(long, env = "WASMESH_AGENT_LISTEN", default_value = wasmesh_agent::agent::DEFAULT_LISTEN)]
    listen: ListenAddr,
    /// The control plane's ADS address.
    #[arg(long, env = "WASMESH_DISCOVERY_ADDRESS", default_value = wasmesh_agent::agent::DEFAULT_DISCOVERY_ADDRESS)]
    discovery_address: String,
    /// Directory of the Wasm module cache (and its index).
    #[arg(
        long,
        env = "WASMESH_WASM_CACHE_DIR",
        default_value = "/var/lib/wasmesh/data"
    )]
    cache_dir: PathBuf,
    /// Registries (`host[:port]`, comma-separated, `*` for all) reachable without TLS
    /// verification. Plain HTTP needs no listing: loopback and private registries, and any
    /// registry that answers HTTPS in plain HTTP, are reached over it (as istio-agent).
    #[arg(long, env = "WASM_INSECURE_REGISTRIES", default_value = "")]
    insecure_registries: String,
    /// Extra networks (comma-separated CIDRs) module downloads must not reach, beyond
    /// link-local and cloud metadata addresses.
    #[arg(long, env = "BLOCKED_CIDRS_IN_WASM_FETCH", default_value = "")]
    blocked_cidrs: String,
    /// Directory of a docker `config.json` whose credentials are used for OCI pulls of plugins
    /// without an imagePullSecret.
    #[arg(long, env = "DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// Rewrite remote Wasm code in ECDS to local files (off: forward ECDS untouched).
    #[arg(long, env = "ISTIO_AGENT_ENABLE_WASM_REMOTE_LOAD_CONVERSION", default_value_t = true, action = clap::ArgAction::Set)]
    wasm_remote_load_conversion: bool,
    /// Prometheus endpoint (`/metrics`); empty to disable.
    #[arg(
        long,
        env = "WASMESH_AGENT_METRICS_ADDR",
        default_value = "127.0.0.1:15020"
    )]
    metrics_addr: String,
    /// A cached module unused this long is removed (never one a proxy still uses).
    #[arg(long, env = "WASM_MODULE_EXPIRY", default_value = "24h", value_parser = parse_duration)]
    module_expiry: Duration,
    /// How often expired modules are looked for.
    #[arg(long, env = "WASM_PURGE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    purge_interval: Duration,
    /// Timeout of one HTTP(S) module download request.
    #[arg(long, env = "WASM_HTTP_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    http_request_timeout: Duration,
    /// Attempts of one HTTP(S) module download.
    #[arg(long, env = "WASM_HTTP_REQUEST_MAX_RETRIES", default_value_t = 5)]
    http_max_retries: u32,
    /// Largest module accepted, in bytes.
    #[arg(long, env = "ISTIO_WASM_MAX_BINARY_SIZE_BYTES", default_value_t = wasmesh_agent::fetch::DEFAULT_MAX_MODULE_SIZE)]
    max_module_size: u64,
}

/// `30s`, `5m`, `24h`, `500ms`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 24h"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    })
}

pub(crate) fn agent(args: AgentArgs) -> anyhow::Result<()> {
    // One rustls provider in the binary (aws-lc-rs); ignore "already installed".
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut cfg = AgentConfig::new(args.listen, args.discovery_address, args.cache_dir);
    cfg.cache.module_expiry = args.module_expiry;
    cfg.cache.purge_interval = args.purge_interval;
    cfg.cache.fetch.insecure_registries = InsecureRegistries::parse(&args.insecure_registries);
    cfg.cache.fetch.http_request_timeout = args.http_request_timeout;
    cfg.cache.fetch.http_max_attempts = args.http_max_retries;
    cfg.cache.fetch.max_module_size = args.max_module_size;
    cfg.cache.fetch.blocked_networks = args
        .blocked_cidrs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| IpNet::parse(s).with_context(|| format!("--blocked-cidrs: {s} is not a CIDR")))
        .collect::<anyhow::Result<_>>()?;
    cfg.convert_remote_wasm = args.wasm_remote_load_conversion;
    cfg.cache.fetch.docker_config = args.docker_config.map(|d| d.join("config.json"));
    cfg.metrics_addr = match args.metrics_addr.trim() {
        "" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--metrics-addr {a}"))?,
        ),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async {
        let mut agent = Agent::start(cfg).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = agent.stopped() => r?,
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
            _ = term.recv() => tracing::info!("terminated, shutting down"),
        }
        // Stops serving and removes the Unix socket.
        agent.shutdown().await;
        Ok::<(), anyhow::Error>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("1d").is_err());
    }
}
