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
    assert_eq!(m.origin(), wasm_host::Origin::InProcess);
    assert_eq!(m2.origin(), wasm_host::Origin::DiskCache);
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

/// A runtime whose compiler is `sh -c SCRIPT` (a stand-in at the process edge; the real
/// `wasmesh compile-wasm` is tested in crates/cli).
fn with_compiler_script(script: &str, timeout_ms: u64) -> Runtime {
    Runtime::new(RuntimeConfig {
        pooling: false,
        compiler: wasm_host::Compiler::Command {
            program: "sh".into(),
            args: vec!["-c".into(), script.into(), "compiler".into()],
        },
        compile_timeout: std::time::Duration::from_millis(timeout_ms),
        ..Default::default()
    })
    .expect("runtime")
}

#[test]
fn a_compiler_process_that_finds_the_module_invalid_fails_it_with_its_reason() {
    let rt = with_compiler_script("cat >/dev/null; printf 'bad section 7' >&2; exit 2", 10_000);
    let err = rt
        .compile(&test_plugins::bytes(test_plugins::HEADERS))
        .err()
        .expect("invalid");
    assert!(matches!(err, wasm_host::Error::InvalidModule(_)), "{err}");
    assert!(err.to_string().contains("bad section 7"), "{err}");
}

#[test]
fn a_compiler_process_that_writes_a_lot_to_stderr_is_not_blocked() {
    // 1 MiB on stderr (a compiler logging at debug), then a verdict: the pipe must be drained
    // or the child blocks until the timeout.
    let rt = with_compiler_script(
        "cat >/dev/null; head -c 1048576 /dev/zero | tr '\\0' x >&2; exit 2",
        20_000,
    );
    let err = rt
        .compile(&test_plugins::bytes(test_plugins::HEADERS))
        .err()
        .expect("invalid");
    // (a blocked child would be killed at the timeout: Error::Compiler)
    assert!(matches!(err, wasm_host::Error::InvalidModule(_)), "{err}");
    assert!(
        err.to_string().len() <= (64 << 10) + 200,
        "the reason is capped"
    );
}

#[test]
fn a_compiler_process_that_crashes_or_hangs_fails_the_module_not_the_caller() {
    let bytes = test_plugins::bytes(test_plugins::HEADERS);
    let crash = with_compiler_script("cat >/dev/null; kill -9 $$", 10_000);
    let err = crash.compile(&bytes).err().expect("crashed compiler");
    assert!(matches!(err, wasm_host::Error::Compiler(_)), "{err}");
    assert!(err.to_string().contains("signal: 9"), "{err}");

    let hang = with_compiler_script("cat >/dev/null; exec sleep 30", 300);
    let started = std::time::Instant::now();
    let err = hang.compile(&bytes).err().expect("hung compiler");
    assert!(err.to_string().contains("killed after 300 ms"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // nothing was cached: a later compile tries again
    assert!(hang.compile(&bytes).is_err());
}

#[test]
fn an_unusable_compiler_process_falls_back_to_compiling_in_process() {
    let bytes = test_plugins::bytes(test_plugins::HEADERS);
    // not startable
    let rt = Runtime::new(RuntimeConfig {
        pooling: false,
        compiler: wasm_host::Compiler::Command {
            program: "/nonexistent/wasmesh".into(),
            args: vec![],
        },
        ..Default::default()
    })
    .expect("runtime");
    let m = rt.compile(&bytes).expect("compiled in process");
    assert_eq!(m.origin(), wasm_host::Origin::InProcess);
    assert!(m.exports().iter().any(|e| e == "proxy_on_request_headers"));
    // an artifact this engine refuses
    let rt = with_compiler_script("cat >/dev/null; printf 'not an artifact'", 10_000);
    let m = rt.compile(&bytes).expect("compiled in process");
    assert_eq!(m.origin(), wasm_host::Origin::InProcess);
    assert_eq!(m.abi(), wasm_host::AbiVersion::V0_2_1);
}

#[test]
fn the_compile_worker_writes_an_artifact_or_the_reason() {
    let bytes = test_plugins::bytes(test_plugins::HEADERS);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = wasm_host::compile_worker(512 << 10, &bytes[..], &mut out, &mut err);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(
        out.starts_with(b"\x7fELF"),
        "a wasmtime artifact is an ELF image"
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code =
        wasm_host::compile_worker(512 << 10, &b"\0asm\x01\0\0\0\x63"[..], &mut out, &mut err);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(!err.is_empty());
}
