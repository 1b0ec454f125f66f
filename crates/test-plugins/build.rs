//! Builds every test plugin from source (like wasmtime's test-programs) and copies the
//! modules to `<target dir>/wasm-plugins/bin/<name>.wasm`, a path that does not change
//! with the outer build's profile or hash, and that lib.rs gets through
//! `WASMESH_TEST_PLUGINS_DIR`.
//!
//! - Rust plugins: a nested `cargo build --release --target wasm32-wasip1` of the separate
//!   `plugins/` workspace, with its own target dir `<target dir>/wasm-plugins`, and an
//!   environment scrubbed of what the outer cargo set for this build script.
//! - AssemblyScript plugins: `plugins/assemblyscript/build.sh` (node + npm required).
//!
//! Any failure stops the build with a message saying what to install or run.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[allow(dead_code, unreachable_pub)]
mod catalog {
    include!("src/catalog.rs");
}

use catalog::{ALL, Toolchain};

const WASM_TARGET: &str = "wasm32-wasip1";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let plugins = manifest_dir
        .join("../../plugins")
        .canonicalize()
        .expect("plugins/ directory next to crates/ (repository layout changed?)");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let wasm_target_dir = target_dir(&out_dir).join("wasm-plugins");
    let bin_dir = wasm_target_dir.join("bin");

    rerun_if_changed(&manifest_dir, &plugins);

    check_wasm_target();
    build_rust_plugins(&plugins, &wasm_target_dir);
    build_assemblyscript_plugins(&plugins);

    fs::create_dir_all(&bin_dir).unwrap_or_else(|e| panic!("create {}: {e}", bin_dir.display()));
    for plugin in ALL {
        let built = match plugin.toolchain {
            Toolchain::Rust { lib } => wasm_target_dir
                .join(WASM_TARGET)
                .join("release")
                .join(format!("{lib}.wasm")),
            Toolchain::AssemblyScript { stem } => plugins
                .join(plugin.dir)
                .join("build")
                .join(format!("{stem}.wasm")),
        };
        install(&built, &bin_dir.join(format!("{}.wasm", plugin.name)));
    }
    println!(
        "cargo:rustc-env=WASMESH_TEST_PLUGINS_DIR={}",
        bin_dir.display()
    );
}

/// The outer build's target (or build) directory: the nearest ancestor of OUT_DIR that
/// cargo marked with CACHEDIR.TAG. OUT_DIR is `<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`.
fn target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    // No tag (very old cargo, or a hand-made layout): <pkg>-<hash>/out -> build -> profile
    // -> target; one more level if the profile dir sits under a target triple.
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("unexpected OUT_DIR layout: {}", out_dir.display()));
    let parent = profile_dir.parent().expect("profile dir has a parent");
    let triple = env::var("TARGET").unwrap_or_default();
    if parent.file_name() == Some(OsStr::new(&triple)) {
        parent
            .parent()
            .expect("triple dir has a parent")
            .to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

fn rerun_if_changed(manifest_dir: &Path, plugins: &Path) {
    let mut paths = vec![
        manifest_dir.join("build.rs"),
        manifest_dir.join("src/catalog.rs"),
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        plugins.join("assemblyscript/build.sh"),
    ];
    for plugin in ALL {
        let dir = plugins.join(plugin.dir);
        match plugin.toolchain {
            Toolchain::Rust { .. } => paths.push(dir),
            // Not the whole directory: node_modules/ and build/ are written by the build.
            Toolchain::AssemblyScript { .. } => {
                for entry in ["assembly", "package.json", "package-lock.json"] {
                    paths.push(dir.join(entry));
                }
            }
        }
    }
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Fails early, with the fix, when the Rust standard library for the Wasm target is missing.
fn check_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .unwrap_or_else(|e| panic!("run {rustc:?} --print target-libdir: {e}"));
    let libdir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let has_std = fs::read_dir(&libdir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
        .unwrap_or(false);
    if !output.status.success() || !has_std {
        panic!(
            "\n\nthe Rust target {WASM_TARGET} is not installed (no std in {libdir:?}).\n\
             The test plugins in plugins/ are built for it. Install it with:\n\n    \
             rustup target add {WASM_TARGET}\n\n(.ci/run does this on CI)\n"
        );
    }
}

/// Is this variable something the outer cargo set for *this* build script (or a flag
/// meant for host code), which must not leak into the nested wasm build?
fn leaks_from_outer_cargo(key: &str) -> bool {
    const KEEP: &[&str] = &[
        "CARGO_HOME",
        // Share the outer jobserver: the machine has 2 cores, not 2 + 2.
        "CARGO_MAKEFLAGS",
    ];
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRY_",
        "CARGO_REGISTRIES_",
        "CARGO_TERM_",
    ];
    const DROP: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "OUT_DIR",
        "RUSTC_LINKER",
    ];
    if DROP.contains(&key) {
        return true;
    }
    if let Some(rest) = key.strip_prefix("CARGO") {
        // `CARGO` itself is the path of the cargo binary; it is what we run.
        if rest.is_empty() || KEEP.contains(&key) {
            return false;
        }
        return !KEEP_PREFIXES.iter().any(|p| key.starts_with(p));
    }
    key.starts_with("__CARGO")
}

fn build_rust_plugins(plugins: &Path, wasm_target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(WASM_TARGET)
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(wasm_target_dir)
        .current_dir(plugins)
        // A build script's stdout is parsed for `cargo:` directives; keep children off it.
        .stdout(Stdio::from(std::io::stderr()));
    for (key, _) in env::vars_os() {
        if let Some(key) = key.to_str()
            && leaks_from_outer_cargo(key)
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run {cargo:?} to build plugins/: {e}"));
    if !status.success() {
        panic!(
            "\n\nbuilding the test plugins failed ({status}):\n    \
             cargo build --release --target {WASM_TARGET} --manifest-path {} --target-dir {}\n\
             The compiler output is above.\n",
            plugins.join("Cargo.toml").display(),
            wasm_target_dir.display()
        );
    }
}

fn build_assemblyscript_plugins(plugins: &Path) {
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            panic!(
                "\n\n`{tool}` is not installed or not on PATH.\n\
                 The AssemblyScript test plugin (plugins/assemblyscript/add_header) needs \
                 Node.js 20 and npm to build. Install them (Debian: `apt-get install nodejs npm`; \
                 CI: .ci/run checks for them) and build again.\n"
            );
        }
    }
    let script = plugins.join("assemblyscript/build.sh");
    let status = Command::new("bash")
        .arg(&script)
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .unwrap_or_else(|e| panic!("run bash {}: {e}", script.display()));
    if !status.success() {
        panic!(
            "\n\nbuilding the AssemblyScript test plugins failed ({status}): bash {}\n\
             The npm / asc output is above.\n",
            script.display()
        );
    }
}

/// Copies `from` to `to` unless `to` already holds the same bytes (keeps its mtime, so
/// nothing downstream rebuilds), through a temporary file so readers never see half a module.
fn install(from: &Path, to: &Path) {
    let bytes = fs::read(from).unwrap_or_else(|e| {
        panic!("expected built plugin at {}: {e}", from.display());
    });
    if fs::read(to).is_ok_and(|old| old == bytes) {
        return;
    }
    let tmp = to.with_extension(format!("wasm.tmp{}", std::process::id()));
    fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, to)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), to.display()));
}
