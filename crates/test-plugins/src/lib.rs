//! The example proxy-wasm plugins of `plugins/`, built from source for tests.
//!
//! The build script compiles every plugin (Rust ones with the stock `proxy-wasm` SDK for
//! `wasm32-wasip1`, AssemblyScript ones with `asc`) and this crate tells tests where the
//! modules are: [`path`] for hosts that load from disk (Envoy, the proxy's file source),
//! [`bytes`] for in-memory use. Plugin names are the constants below ([`HEADERS`], ...);
//! what each plugin does, with which configuration, headers and metrics, is specified in
//! `plugins/README.md`. Building needs the `wasm32-wasip1` Rust target and Node.js + npm;
//! the build fails with instructions when either is missing.

use std::path::PathBuf;

mod catalog;

pub use catalog::*;

/// Directory holding every built plugin as `<name>.wasm`
/// (`<target dir>/wasm-plugins/bin`).
pub fn dir() -> PathBuf {
    PathBuf::from(env!("WASMESH_TEST_PLUGINS_DIR"))
}

/// Looks up a plugin by name.
pub fn plugin(name: &str) -> Option<&'static Plugin> {
    ALL.iter().find(|p| p.name == name)
}

/// Path of the built module for plugin `name` (one of the constants, e.g. [`HEADERS`]).
///
/// # Panics
///
/// If `name` is not a known plugin.
pub fn path(name: &str) -> PathBuf {
    if plugin(name).is_none() {
        let known: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        panic!("unknown test plugin {name:?}; known plugins: {known:?}");
    }
    dir().join(format!("{name}.wasm"))
}

/// The module bytes of plugin `name`.
///
/// # Panics
///
/// If `name` is unknown or the file cannot be read (for example the target dir was
/// cleaned by hand: `cargo clean -p test-plugins` makes the build script run again).
pub fn bytes(name: &str) -> Vec<u8> {
    let path = path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read test plugin {name:?} at {}: {e} (rebuild with `cargo clean -p test-plugins && cargo build -p test-plugins`)",
            path.display()
        )
    })
}

/// Modules embedded at build time for the `wasmesh up` demo: `(file name, bytes)`.
pub const DEMO_MODULES: &[(&str, &[u8])] = &[
    (
        "headers.wasm",
        include_bytes!(concat!(env!("WASMESH_TEST_PLUGINS_DIR"), "/headers.wasm")),
    ),
    (
        "auth.wasm",
        include_bytes!(concat!(env!("WASMESH_TEST_PLUGINS_DIR"), "/auth.wasm")),
    ),
    (
        "metrics.wasm",
        include_bytes!(concat!(env!("WASMESH_TEST_PLUGINS_DIR"), "/metrics.wasm")),
    ),
    (
        "body_rewrite.wasm",
        include_bytes!(concat!(
            env!("WASMESH_TEST_PLUGINS_DIR"),
            "/body_rewrite.wasm"
        )),
    ),
    (
        "as_add_header.wasm",
        include_bytes!(concat!(
            env!("WASMESH_TEST_PLUGINS_DIR"),
            "/as_add_header.wasm"
        )),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of the functions a module exports, read from its export section.
    fn exported_functions(module: &[u8]) -> Vec<String> {
        fn leb_u32(bytes: &[u8], pos: &mut usize) -> u32 {
            let (mut value, mut shift) = (0u32, 0);
            loop {
                let byte = bytes[*pos];
                *pos += 1;
                value |= u32::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return value;
                }
                shift += 7;
            }
        }
        let mut pos = 8; // magic + version
        while pos < module.len() {
            let id = module[pos];
            pos += 1;
            let size = leb_u32(module, &mut pos) as usize;
            let end = pos + size;
            if id == 7 {
                let mut names = Vec::new();
                let count = leb_u32(module, &mut pos);
                for _ in 0..count {
                    let len = leb_u32(module, &mut pos) as usize;
                    let name = String::from_utf8_lossy(&module[pos..pos + len]).into_owned();
                    pos += len;
                    let kind = module[pos];
                    pos += 1;
                    leb_u32(module, &mut pos); // index
                    if kind == 0 {
                        names.push(name);
                    }
                }
                return names;
            }
            pos = end;
        }
        Vec::new()
    }

    #[test]
    fn every_plugin_is_built_and_exports_its_abi_marker() {
        for plugin in ALL {
            let module = bytes(plugin.name);
            assert_eq!(
                &module[..8],
                b"\0asm\x01\0\0\0",
                "{}: not a Wasm module",
                plugin.name
            );
            let exports = exported_functions(&module);
            let markers: Vec<&String> = exports
                .iter()
                .filter(|e| e.starts_with("proxy_abi_version_"))
                .collect();
            assert_eq!(
                markers,
                [plugin.abi_export],
                "{}: ABI markers exported",
                plugin.name
            );
            for callback in ["proxy_on_context_create", "proxy_on_request_headers"] {
                assert!(
                    exports.iter().any(|e| e == callback),
                    "{}: does not export {callback}",
                    plugin.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique_and_paths_are_stable() {
        let mut names: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(path(LOOP), dir().join("loop.wasm"));
    }

    #[test]
    #[should_panic(expected = "unknown test plugin")]
    fn unknown_name_panics_with_the_list() {
        path("no-such-plugin");
    }
}
