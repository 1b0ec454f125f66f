//! Module compilation cache and instantiation.

use wasm_host::{Runtime, RuntimeConfig};

#[test]
fn modules_compile_once_and_precompiled_artifacts_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        pooling: false,
        ..Default::default()
    };
    let bytes = test_plugins::bytes(test_plugins::HEADERS);
    let rt = Runtime::new(cfg.clone()).expect("runtime");
    let m = rt.compile(&bytes).expect("compile");
    assert_eq!(m.abi(), wasm_host::AbiVersion::V0_2_1);
    assert_eq!(m.size(), bytes.len());
    assert!(m.exports().iter().any(|e| e == "proxy_on_request_headers"));
    assert!(m.imports().iter().any(|i| i == "env.proxy_log"));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "one precompiled artifact");
    let name = files[0].file_name().to_string_lossy().into_owned();
    assert!(
        name.starts_with(m.sha256()) && name.ends_with(".cwasm"),
        "{name}"
    );
    // a second runtime (a restart) loads the artifact instead of compiling
    let rt2 = Runtime::new(cfg).expect("runtime");
    let m2 = rt2.compile(&bytes).expect("from cache");
    assert_eq!(m2.sha256(), m.sha256());
    // a corrupt artifact is discarded and recompiled
    std::fs::write(files[0].path(), b"corrupt").expect("write");
    let rt3 = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        pooling: false,
        ..Default::default()
    })
    .expect("runtime");
    assert!(
        rt3.compile(&bytes).is_ok(),
        "corrupt cache entry is recompiled"
    );
}
