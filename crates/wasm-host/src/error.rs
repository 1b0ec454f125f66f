//! Errors of the Wasm host: loading, instantiating and calling plugins.

/// What can go wrong loading or running a plugin. Messages name the plugin and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("module is not valid WebAssembly: {0}")]
    InvalidModule(String),
    #[error(
        "missing or unknown proxy-wasm ABI version: the module exports none of \
         proxy_abi_version_0_2_1, proxy_abi_version_0_2_0, proxy_abi_version_0_1_0"
    )]
    UnknownAbi,
    #[error("module exports no linear memory named `memory`")]
    NoMemory,
    #[error("module exports neither `proxy_on_memory_allocate` nor `malloc`")]
    NoAllocator,
    #[error("plugin {plugin}: cannot link module: {reason}")]
    Link { plugin: String, reason: String },
    #[error("plugin {plugin}: {callback} failed: {reason}")]
    Trap {
        plugin: String,
        callback: &'static str,
        reason: String,
        kind: TrapKind,
    },
    #[error("plugin {plugin}: {callback} returned false (rejected its configuration)")]
    Rejected {
        plugin: String,
        callback: &'static str,
    },
    #[error("plugin {plugin}: the VM failed earlier and takes no more calls")]
    VmFailed { plugin: String },
    #[error("plugin {plugin}: unknown context id {context_id}")]
    UnknownContext { plugin: String, context_id: u32 },
    #[error("module could not be compiled: {0}")]
    Compiler(String),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("module cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a call into the guest stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest trapped (panic, unreachable, out-of-bounds, stack overflow...).
    Trap,
    /// The per-callback CPU deadline passed (epoch interruption).
    Deadline,
    /// The guest asked for more memory than its limit allows.
    Memory,
    /// The guest called `proc_exit`.
    Exit,
}

impl Error {
    /// The trap kind, if this error is a trap.
    pub fn trap_kind(&self) -> Option<TrapKind> {
        match self {
            Error::Trap { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}
