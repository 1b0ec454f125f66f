//! The host functions linked into every plugin: `env.proxy_*` (all ABI versions) and the
//! WASI preview1 subset the SDKs import, with no host filesystem, network or environment.

mod buffers;
mod env;
mod maps;
mod mem;
mod property;
mod wasi;

pub(crate) use wasi::ProcExit;

use wasmtime::Linker;

use crate::state::VmState;

/// Defines every import on `linker`.
pub(crate) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    env::define(linker)?;
    maps::define(linker)?;
    buffers::define(linker)?;
    property::define(linker)?;
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        wasi::define(linker, module)?;
    }
    Ok(())
}
