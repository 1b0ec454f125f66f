//! `wasmesh status`: the control plane's debug endpoint (`/debug/syncz`,
//! `/debug/config_status`) as tables: connected proxies, per type what they acked and rejected,
//! and config files with errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// `wasmesh status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The control plane's status endpoint (`wasmesh control-plane --status-addr`).
    #[arg(
        long,
        env = "WASMESH_CONTROL_PLANE_STATUS",
        default_value = "http://127.0.0.1:15014"
    )]
    control_plane: String,
}

#[derive(Debug, Deserialize)]
struct Syncz {
    #[serde(default)]
    nodes: Vec<NodeSync>,
}

#[derive(Debug, Deserialize)]
struct NodeSync {
    node: String,
    #[serde(default)]
    streams: usize,
    #[serde(default)]
    acked: BTreeMap<String, String>,
    #[serde(default)]
    nacked: BTreeMap<String, Nack>,
    #[serde(default)]
    desired: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Nack {
    version: String,
    error: String,
}

#[derive(Debug, Deserialize)]
struct ConfigStatus {
    #[serde(default)]
    files: Vec<FileStatus>,
}

#[derive(Debug, Deserialize)]
struct FileStatus {
    file: String,
    #[serde(default)]
    serving: usize,
    #[serde(default)]
    errors: Vec<String>,
}

/// `type.googleapis.com/envoy.config.listener.v3.Listener` → `LDS`.
fn short_type(type_url: &str) -> String {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    match name {
        "envoy.config.listener.v3.Listener" => "LDS".into(),
        "envoy.config.route.v3.RouteConfiguration" => "RDS".into(),
        "envoy.config.cluster.v3.Cluster" => "CDS".into(),
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => "EDS".into(),
        "envoy.config.core.v3.TypedExtensionConfig" => "ECDS".into(),
        other => other.to_owned(),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn render(sync: &Syncz, config: &ConfigStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "PROXIES: {} connected", sync.nodes.len());
    if !sync.nodes.is_empty() {
        let mut rows = vec![vec![
            "NODE".to_owned(),
            "TYPE".into(),
            "ACKED".into(),
            "DESIRED".into(),
            "STATUS".into(),
        ]];
        for n in &sync.nodes {
            let types: BTreeSet<&String> = n
                .acked
                .keys()
                .chain(n.desired.keys())
                .chain(n.nacked.keys())
                .collect();
            let node = if n.streams > 1 {
                format!("{} ({} streams)", n.node, n.streams)
            } else {
                n.node.clone()
            };
            if types.is_empty() {
                rows.push(vec![node, "-".into(), "-".into(), "-".into(), "-".into()]);
                continue;
            }
            for (i, t) in types.into_iter().enumerate() {
                let acked = n.acked.get(t);
                let desired = n.desired.get(t);
                let status = match (n.nacked.get(t), acked, desired) {
                    (Some(k), _, _) => format!("NACKED {}: {}", k.version, k.error),
                    (None, Some(a), Some(d)) if a == d => "SYNCED".into(),
                    (None, Some(_), Some(_)) => "STALE".into(),
                    (None, None, Some(_)) => "NOT ACKED".into(),
                    (None, _, None) => "NOT SENT".into(),
                };
                rows.push(vec![
                    if i == 0 { node.clone() } else { String::new() },
                    short_type(t),
                    acked.cloned().unwrap_or_else(|| "-".into()),
                    desired.cloned().unwrap_or_else(|| "-".into()),
                    status,
                ]);
            }
        }
        out.push_str(&table(&rows));
    }
    let bad: Vec<&FileStatus> = config
        .files
        .iter()
        .filter(|f| !f.errors.is_empty())
        .collect();
    let _ = writeln!(
        out,
        "\nCONFIG FILES: {} ({} with errors)",
        config.files.len(),
        bad.len()
    );
    for f in bad {
        let _ = writeln!(
            out,
            "{}: not applied; serving {} resources from its last valid version",
            f.file, f.serving
        );
        for e in &f.errors {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    out
}

async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> anyhow::Result<T> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let resp = client.get(&url).send().await.with_context(|| {
        format!("cannot reach the control plane at {url} (is it running with --status-addr?)")
    })?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!("{url} answered HTTP {status}");
    }
    resp.json()
        .await
        .with_context(|| format!("{url} did not answer the expected JSON"))
}

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (sync, config) = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        let sync: Syncz = get(&client, &args.control_plane, "/debug/syncz").await?;
        let config: ConfigStatus =
            get(&client, &args.control_plane, "/debug/config_status").await?;
        anyhow::Ok((sync, config))
    })?;
    print!("{}", render(&sync, &config));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_acks_nacks_and_file_errors() {
        let sync: Syncz = serde_json::from_value(serde_json::json!({"nodes": [{
            "node": "router~1.2.3.4~gw.demo~demo.svc.cluster.local",
            "streams": 1,
            "acked": {"type.googleapis.com/envoy.config.listener.v3.Listener": "l1"},
            "nacked": {"type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig":
                {"version": "e2", "error": "bad config"}},
            "desired": {
                "type.googleapis.com/envoy.config.listener.v3.Listener": "l1",
                "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig": "e2"
            }
        }]}))
        .unwrap();
        let config: ConfigStatus = serde_json::from_value(serde_json::json!({"files": [
            {"file": "ok.yaml", "applied": true, "serving": 2, "errors": []},
            {"file": "bad.yaml", "applied": false, "serving": 1, "errors": ["spec.sha256: bad"]}
        ]}))
        .unwrap();
        let out = render(&sync, &config);
        assert!(out.contains("PROXIES: 1 connected"), "{out}");
        assert!(out.contains("LDS   l1     l1       SYNCED"), "{out}");
        assert!(
            out.contains("ECDS  -      e2       NACKED e2: bad config"),
            "{out}"
        );
        assert!(out.contains("CONFIG FILES: 2 (1 with errors)"), "{out}");
        assert!(out.contains("  error: spec.sha256: bad"), "{out}");
        assert!(!out.contains("ok.yaml"), "{out}");
    }
}
