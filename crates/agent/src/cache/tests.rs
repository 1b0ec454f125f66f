use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::fetch::unbox::tests::gzip;
use crate::testutil::{FileServer, Route, fetch_options, module, sha};

fn open(dir: &Path) -> ModuleCache {
    let mut o = CacheOptions::new(dir);
    o.fetch = fetch_options();
    ModuleCache::open(o, Arc::new(Metrics::default())).unwrap()
}

fn opts(resource: &str, rv: &str, policy: PullPolicy) -> GetOptions {
    GetOptions {
        resource_name: resource.into(),
        resource_version: rv.into(),
        pull_policy: policy,
        timeout: Duration::from_secs(10),
        ..GetOptions::default()
    }
}

fn with_sha(mut o: GetOptions, sha: &str) -> GetOptions {
    o.checksum = Some(sha.into());
    o
}

#[tokio::test]
async fn http_module_is_verified_cached_and_served_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    let m = module(1);
    srv.set("/m.wasm", 200, m.clone());
    let cache = open(dir.path());
    let o = with_sha(opts("r1", "1", PullPolicy::Unspecified), &sha(&m));
    let p1 = cache.get(&srv.url("/m.wasm"), &o).await.unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), m);
    assert!(p1.starts_with(dir.path()));
    assert_eq!(
        p1.file_name().unwrap().to_str().unwrap(),
        format!("{}.wasm", sha(&m))
    );
    let p2 = cache.get(&srv.url("/m.wasm"), &o).await.unwrap();
    assert_eq!(p1, p2);
    assert_eq!(srv.hits("/m.wasm"), 1);
    let metrics = cache.metrics();
    assert_eq!(metrics.cache_lookup_count(true), 1);
    assert_eq!(metrics.cache_lookup_count(false), 1);
    assert_eq!(metrics.cache_entries(), 1);
    assert_eq!(metrics.remote_fetch_count(FetchResult::Success), 1);
}

#[tokio::test]
async fn checksum_mismatch_names_both_digests_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    let m = module(2);
    srv.set("/m.wasm", 200, m.clone());
    let cache = open(dir.path());
    let wrong = "a".repeat(64);
    let err = cache
        .get(
            &srv.url("/m.wasm"),
            &with_sha(opts("r", "1", PullPolicy::Unspecified), &wrong),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&wrong) && msg.contains(&sha(&m)) && msg.contains("/m.wasm"),
        "{msg}"
    );
    assert!(cache.modules().is_empty());
    assert_eq!(
        cache
            .metrics()
            .remote_fetch_count(FetchResult::ChecksumMismatched),
        1
    );
}

#[tokio::test]
async fn non_wasm_body_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m.wasm", 200, b"<html>not a module</html>".to_vec());
    let cache = open(dir.path());
    let err = cache
        .get(
            &srv.url("/m.wasm"),
            &opts("r", "1", PullPolicy::Unspecified),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid"), "{err}");
    assert!(cache.modules().is_empty());
    // Once the server is fixed, the module is served.
    srv.set("/m.wasm", 200, module(3));
    let p = cache
        .get(
            &srv.url("/m.wasm"),
            &opts("r", "1", PullPolicy::Unspecified),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(p).unwrap(), module(3));
}

#[tokio::test]
async fn gzip_body_is_unpacked_and_checksum_is_of_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m.wasm.gz", 200, gzip(&module(4)));
    let cache = open(dir.path());
    let o = with_sha(opts("r", "1", PullPolicy::Unspecified), &sha(&module(4)));
    let p = cache.get(&srv.url("/m.wasm.gz"), &o).await.unwrap();
    assert_eq!(std::fs::read(p).unwrap(), module(4));
}

#[tokio::test]
async fn if_not_present_reuses_the_module_across_resource_versions() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m.wasm", 200, module(5));
    let cache = open(dir.path());
    let url = srv.url("/m.wasm");
    let p1 = cache
        .get(&url, &opts("r", "1", PullPolicy::IfNotPresent))
        .await
        .unwrap();
    srv.set("/m.wasm", 200, module(6));
    let p2 = cache
        .get(&url, &opts("r", "2", PullPolicy::IfNotPresent))
        .await
        .unwrap();
    // Unset policy on a non-latest URL behaves as IfNotPresent.
    let p3 = cache
        .get(&url, &opts("r", "3", PullPolicy::Unspecified))
        .await
        .unwrap();
    assert_eq!((p1.clone(), p1.clone()), (p2, p3));
    assert_eq!(srv.hits("/m.wasm"), 1);
}

#[tokio::test]
async fn always_pulls_again_when_the_resource_version_changes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m.wasm", 200, module(7));
    let cache = open(dir.path());
    let url = srv.url("/m.wasm");
    let p1 = cache
        .get(&url, &opts("r", "1", PullPolicy::Always))
        .await
        .unwrap();
    let again = cache
        .get(&url, &opts("r", "1", PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!(p1, again);
    assert_eq!(srv.hits("/m.wasm"), 1, "same resource version: cache hit");
    srv.set("/m.wasm", 200, module(8));
    let p2 = cache
        .get(&url, &opts("r", "2", PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!(srv.hits("/m.wasm"), 2);
    assert_ne!(p1, p2);
    assert_eq!(std::fs::read(p2).unwrap(), module(8));
}

#[test]
fn latest_tag_behaves_as_always_when_policy_is_unset() {
    let latest = parse_url("oci://reg.io/ns/plugin:latest").unwrap();
    let v1 = parse_url("oci://reg.io/ns/plugin:v1").unwrap();
    assert!(!ignores_resource_version(PullPolicy::Unspecified, &latest));
    assert!(ignores_resource_version(PullPolicy::Unspecified, &v1));
    assert!(ignores_resource_version(PullPolicy::IfNotPresent, &latest));
    assert!(!ignores_resource_version(PullPolicy::Always, &v1));
    let http = parse_url("http://h/plugin:latest").unwrap();
    assert!(ignores_resource_version(PullPolicy::Unspecified, &http));
}

#[test]
fn module_names_strip_tag_and_digest() {
    let d = "b".repeat(64);
    let p = parse_url(&format!("oci://127.0.0.1:5000/ns/plugin:v1@sha256:{d}")).unwrap();
    assert_eq!(p.name, "oci://127.0.0.1:5000/ns/plugin");
    assert_eq!(p.digest.as_deref(), Some(d.as_str()));
    assert_eq!(p.tag.as_deref(), Some("v1"));
    assert_eq!(parse_url("oci://127.0.0.1:5000/plugin").unwrap().tag, None);
    assert!(matches!(
        parse_url("ftp://x/y"),
        Err(CacheError::UnsupportedScheme { .. })
    ));
    assert!(parse_url("oci://nohost").is_err());
}

#[tokio::test]
async fn invalid_checksum_is_refused_before_any_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    let cache = open(dir.path());
    let err = cache
        .get(
            &srv.url("/m"),
            &with_sha(opts("r", "1", PullPolicy::Unspecified), "../../etc/passwd"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::InvalidChecksum { .. }), "{err}");
    assert_eq!(srv.total(), 0);
}

#[tokio::test]
async fn concurrent_requests_share_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set_route(
        "/slow.wasm",
        Route {
            status: 200,
            body: module(9),
            delay: Duration::from_millis(300),
        },
    );
    let cache = open(dir.path());
    let url = srv.url("/slow.wasm");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (cache, url) = (cache.clone(), url.clone());
            tokio::spawn(async move {
                cache
                    .get(&url, &opts(&format!("r{i}"), "1", PullPolicy::Unspecified))
                    .await
            })
        })
        .collect();
    let mut paths = std::collections::BTreeSet::new();
    for t in tasks {
        paths.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(paths.len(), 1);
    assert_eq!(srv.hits("/slow.wasm"), 1);
    assert_eq!(cache.in_use().len(), 1);
}

#[tokio::test]
async fn expiry_removes_unused_modules_but_never_one_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    for (i, p) in ["/a", "/b", "/c"].iter().enumerate() {
        srv.set(p, 200, module(10 + i as u8));
    }
    let cache = open(dir.path());
    let pa = cache
        .get(&srv.url("/a"), &opts("r1", "1", PullPolicy::Unspecified))
        .await
        .unwrap();
    let pb = cache
        .get(&srv.url("/b"), &opts("r2", "1", PullPolicy::Unspecified))
        .await
        .unwrap();
    // r1 moves to module c: a is no longer in use.
    let pc = cache
        .get(&srv.url("/c"), &opts("r1", "2", PullPolicy::Unspecified))
        .await
        .unwrap();
    assert!(
        cache.purge_expired(SystemTime::now()).is_empty(),
        "nothing is old yet"
    );
    let later = SystemTime::now() + DEFAULT_MODULE_EXPIRY + Duration::from_secs(1);
    let removed = cache.purge_expired(later);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name, srv.url("/a"));
    assert!(!pa.exists() && pb.exists() && pc.exists());
    cache.release("r2");
    let removed = cache.purge_expired(later);
    assert_eq!(removed.len(), 1);
    assert!(!pb.exists() && pc.exists());
    assert_eq!(cache.metrics().cache_entries(), 1);
    // The expired URL is fetched again when asked for.
    cache
        .get(&srv.url("/a"), &opts("r3", "1", PullPolicy::Unspecified))
        .await
        .unwrap();
    assert_eq!(srv.hits("/a"), 2);
}

#[tokio::test]
async fn the_index_survives_a_restart_and_corrupt_files_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/a", 200, module(20));
    srv.set("/b", 200, module(21));
    let (url_a, url_b) = (srv.url("/a"), srv.url("/b"));
    let (pa, pb) = {
        let cache = open(dir.path());
        let pa = cache
            .get(&url_a, &opts("ra", "1", PullPolicy::Unspecified))
            .await
            .unwrap();
        let pb = cache
            .get(&url_b, &opts("rb", "1", PullPolicy::Unspecified))
            .await
            .unwrap();
        (pa, pb)
    };
    drop(srv); // the server is gone: only the disk can answer now
    std::fs::write(&pb, b"\0asm\x01\0\0\0tampered").unwrap();
    let cache = open(dir.path());
    assert_eq!(cache.modules().len(), 1, "the tampered module is dropped");
    let p = cache
        .get(&url_a, &opts("ra", "2", PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(p, pa);
    assert_eq!(cache.in_use().len(), 1);
    assert!(!pb.exists());
    let err = cache
        .get(&url_b, &opts("rb", "1", PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Fetch(_)), "{err}");
}

#[tokio::test]
async fn writes_are_atomic_and_leave_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    let cache = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        srv.set(&format!("/m{i}"), 200, module(30 + i));
        let (cache, url) = (cache.clone(), srv.url(&format!("/m{i}")));
        tasks.push(tokio::spawn(async move {
            cache
                .get(&url, &opts(&format!("r{i}"), "1", PullPolicy::Unspecified))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut files = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    assert!(
        files.iter().all(|f| !f.to_string_lossy().ends_with(".tmp")),
        "{files:?}"
    );
    assert_eq!(
        files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "wasm"))
            .count(),
        8
    );
    let index = IndexFile::load(dir.path()).unwrap().unwrap();
    assert_eq!(index.modules.len(), 8);
    assert_eq!(index.in_use.len(), 8);
    for m in index.modules {
        let p = module_path(
            dir.path(),
            &ModuleKey {
                name: m.name,
                checksum: m.checksum.clone(),
            },
        );
        assert_eq!(sha256_hex(&std::fs::read(p).unwrap()), m.file_sha256);
        assert_eq!(
            m.file_sha256, m.checksum,
            "for HTTP the checksum is the module sha256"
        );
    }
}

#[tokio::test]
async fn http_retries_5xx_but_not_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/down", 503, vec![]);
    srv.set("/gone", 404, vec![]);
    let cache = open(dir.path());
    let err = cache
        .get(&srv.url("/down"), &opts("r", "1", PullPolicy::Unspecified))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("after 3 attempts") && err.to_string().contains("503"),
        "{err}"
    );
    assert_eq!(srv.hits("/down"), 3);
    let err = cache
        .get(&srv.url("/gone"), &opts("r", "1", PullPolicy::Unspecified))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert_eq!(srv.hits("/gone"), 1);
    assert_eq!(
        cache
            .metrics()
            .remote_fetch_count(FetchResult::DownloadFailure),
        2
    );
}

#[tokio::test]
async fn oversized_and_metadata_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    let mut big = module(40);
    big.extend_from_slice(&[0u8; 100]);
    srv.set("/big", 200, big);
    let mut o = CacheOptions::new(dir.path());
    o.fetch = fetch_options();
    o.fetch.max_module_size = 64;
    let cache = ModuleCache::open(o, Arc::new(Metrics::default())).unwrap();
    let err = cache
        .get(&srv.url("/big"), &opts("r", "1", PullPolicy::Unspecified))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("larger than the maximum of 64 bytes"),
        "{err}"
    );
    let err = cache
        .get(
            "http://169.254.169.254/latest/meta-data",
            &opts("r", "1", PullPolicy::Unspecified),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::BlockedAddress { .. })),
        "{err}"
    );
    let err = cache
        .get(
            "oci://169.254.169.254:5000/p/x:v1",
            &opts("r", "1", PullPolicy::Unspecified),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::BlockedAddress { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_fetch_that_outlives_its_deadline_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set_route(
        "/slow",
        Route {
            status: 200,
            body: module(41),
            delay: Duration::from_secs(3),
        },
    );
    let cache = open(dir.path());
    let mut o = opts("r", "1", PullPolicy::Unspecified);
    o.timeout = Duration::from_millis(100);
    let err = cache.get(&srv.url("/slow"), &o).await.unwrap_err();
    assert!(matches!(err, CacheError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn the_purger_task_removes_expired_modules_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/a", 200, module(60));
    let mut o = CacheOptions::new(dir.path());
    o.fetch = fetch_options();
    o.purge_interval = Duration::from_millis(20);
    o.module_expiry = Duration::ZERO;
    let cache = ModuleCache::open(o, Arc::new(Metrics::default())).unwrap();
    let p = cache
        .get(&srv.url("/a"), &opts("r", "1", PullPolicy::Unspecified))
        .await
        .unwrap();
    let purger = cache.spawn_purger();
    // In use: never expired, whatever its age.
    assert!(
        cache
            .purge_expired(SystemTime::now() + Duration::from_secs(3600))
            .is_empty()
    );
    assert!(p.exists());
    cache.release("r");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the purger never removed the module"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cache.modules().is_empty());
    purger.abort();
}

#[tokio::test]
async fn credentials_in_http_urls_never_reach_errors() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m", 404, vec![]);
    let cache = open(dir.path());
    let url = format!("http://alice:top-secret@{}/m", srv.addr);
    let err = cache
        .get(&url, &opts("r", "1", PullPolicy::Unspecified))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert!(!err.to_string().contains("top-secret"), "{err}");
    let err = cache
        .get(
            "http://alice:top-secret@127.0.0.1:1/m",
            &opts("r", "1", PullPolicy::Unspecified),
        )
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("top-secret"), "{err}");
}
