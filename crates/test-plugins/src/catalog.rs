// The one list of test plugins. Shared by lib.rs (as a module) and build.rs (through
// `include!`), so the build and the API cannot disagree about names or ABI markers.

/// `plugins/headers`: configurable header add / replace / remove.
pub const HEADERS: &str = "headers";
/// `plugins/auth`: API-key check, 401 local reply.
pub const AUTH: &str = "auth";
/// `plugins/body_rewrite`: buffers and rewrites request/response bodies.
pub const BODY_REWRITE: &str = "body_rewrite";
/// `plugins/callout`: HTTP callout to an auth cluster, resumes or replies 403.
pub const CALLOUT: &str = "callout";
/// `plugins/tick_shared`: timer increments shared data, reported in responses.
pub const TICK_SHARED: &str = "tick_shared";
/// `plugins/queue`: shared queue from stream to root context.
pub const QUEUE: &str = "queue";
/// `plugins/metrics`: counter, gauge and histogram.
pub const METRICS: &str = "metrics";
/// `plugins/properties`: reads Envoy attributes, echoes them as headers.
pub const PROPERTIES: &str = "properties";
/// `plugins/logging`: logs at every level, and to stdout.
pub const LOGGING: &str = "logging";
/// `plugins/tcp_counter`: network (L4) filter counting bytes, denies a prefix.
pub const TCP_COUNTER: &str = "tcp_counter";
/// `plugins/hostile/trap`: panics (traps) when `x-trap` is sent.
pub const TRAP: &str = "trap";
/// `plugins/hostile/loop`: spins forever when `x-loop` is sent.
pub const LOOP: &str = "loop";
/// `plugins/hostile/memory_hog`: allocates until memory runs out when `x-hog` is sent.
pub const MEMORY_HOG: &str = "memory_hog";
/// `plugins/bench_rw`: reads `x-bench-in`, adds `x-bench-out` (benchmarks).
pub const BENCH_RW: &str = "bench_rw";
/// `plugins/trace`: records every HTTP callback with its arguments (header, trailer, metric).
pub const TRACE: &str = "trace";
/// `plugins/props_probe`: reads configured property paths in three phases and shows the answers.
pub const PROPS_PROBE: &str = "props_probe";
/// `plugins/vm_share`: shows its root context id and the VM's root contexts, starts and requests.
pub const VM_SHARE: &str = "vm_share";
/// `plugins/abi010`: built with proxy-wasm 0.1.4, exports `proxy_abi_version_0_1_0`.
pub const ABI010: &str = "abi010";
/// `plugins/assemblyscript/add_header`: AssemblyScript SDK, ABI 0.2.0.
pub const AS_ADD_HEADER: &str = "as_add_header";

/// How a test plugin is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// A cdylib crate of the `plugins/` Cargo workspace; `lib` is its library name, i.e.
    /// the file stem cargo gives the `.wasm`.
    Rust {
        /// Cargo library name.
        lib: &'static str,
    },
    /// An AssemblyScript project built by `plugins/assemblyscript/build.sh` into
    /// `<dir>/build/<stem>.wasm`.
    AssemblyScript {
        /// File stem of the output under `<dir>/build/`.
        stem: &'static str,
    },
}

/// One test plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plugin {
    /// Name used with [`path`](crate::path) / [`bytes`](crate::bytes); also the file stem.
    pub name: &'static str,
    /// Source directory, relative to `plugins/`.
    pub dir: &'static str,
    /// How it is built.
    pub toolchain: Toolchain,
    /// The `proxy_abi_version_*` marker the module exports.
    pub abi_export: &'static str,
}

const ABI_0_2_1: &str = "proxy_abi_version_0_2_1";

const fn rust(name: &'static str, dir: &'static str, lib: &'static str) -> Plugin {
    Plugin {
        name,
        dir,
        toolchain: Toolchain::Rust { lib },
        abi_export: ABI_0_2_1,
    }
}

/// Every test plugin, Rust ones first.
pub const ALL: &[Plugin] = &[
    rust(HEADERS, "headers", "headers"),
    rust(AUTH, "auth", "auth"),
    rust(BODY_REWRITE, "body_rewrite", "body_rewrite"),
    rust(CALLOUT, "callout", "callout"),
    rust(TICK_SHARED, "tick_shared", "tick_shared"),
    rust(QUEUE, "queue", "queue"),
    rust(METRICS, "metrics", "metrics"),
    rust(PROPERTIES, "properties", "properties"),
    rust(LOGGING, "logging", "logging"),
    rust(TCP_COUNTER, "tcp_counter", "tcp_counter"),
    rust(TRAP, "hostile/trap", "trap"),
    // `loop` is a Rust keyword, so the crate is called busy_loop.
    rust(LOOP, "hostile/loop", "busy_loop"),
    rust(MEMORY_HOG, "hostile/memory_hog", "memory_hog"),
    rust(BENCH_RW, "bench_rw", "bench_rw"),
    rust(TRACE, "trace", "trace"),
    rust(PROPS_PROBE, "props_probe", "props_probe"),
    rust(VM_SHARE, "vm_share", "vm_share"),
    Plugin {
        name: ABI010,
        dir: "abi010",
        toolchain: Toolchain::Rust { lib: "abi010" },
        abi_export: "proxy_abi_version_0_1_0",
    },
    Plugin {
        name: AS_ADD_HEADER,
        dir: "assemblyscript/add_header",
        toolchain: Toolchain::AssemblyScript { stem: "add_header" },
        abi_export: "proxy_abi_version_0_2_0",
    },
];
