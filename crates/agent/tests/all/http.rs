//! HTTPS module downloads from a real server (docker-registry's blob endpoint, self-signed TLS).

use std::sync::Arc;
use std::time::Duration;

use wasmesh_agent::cache::{CacheError, CacheOptions, GetOptions, ModuleCache};
use wasmesh_agent::fetch::InsecureRegistries;
use wasmesh_agent::metrics::Metrics;

use crate::registry::{Format, Options, Registry, module, sha256};

#[tokio::test]
async fn https_downloads_verify_tls_unless_the_host_is_listed_insecure() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: true,
        auth: false,
    })
    .await?;
    let m = module(42);
    // A single-layer artifact: the layer blob is the module itself.
    reg.push("p/blob", "v1", Format::SingleLayerArtifact, &m)
        .await?;
    let url = format!("https://{}/v2/p/blob/blobs/sha256:{}", reg.host, sha256(&m));
    let get = |insecure: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = CacheOptions::new(dir.path());
        o.fetch.insecure_registries = InsecureRegistries::parse(insecure);
        o.fetch.http_max_attempts = 1;
        let cache = ModuleCache::open(o, Arc::new(Metrics::default())).expect("cache");
        let url = url.clone();
        let sha = sha256(&m);
        async move {
            let opts = GetOptions {
                checksum: Some(sha),
                resource_name: "r".into(),
                timeout: Duration::from_secs(20),
                ..GetOptions::default()
            };
            let r = cache
                .get(&url, &opts)
                .await
                .map(|p| std::fs::read(p).unwrap_or_default());
            drop(dir);
            r
        }
    };
    let err = get("").await.unwrap_err();
    assert!(matches!(err, CacheError::Fetch(_)), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(get(&reg.host).await?, m);
    Ok(())
}
