//! WASI preview1 for plugins: stdout/stderr go to the log, clocks and randomness work, the
//! environment is only the plugin's configured variables, and every file or socket call fails.
//! (Hand-written: the SDKs import ~10 functions; wasmtime-wasi would pull in the component model
//! and grant capabilities we would then have to take away.)

use std::time::Instant;

use wasmtime::{Caller, FuncType, Linker, Val, ValType};

use super::mem::{put_u32, put_u64, slice, split};
use crate::abi::LogLevel;
use crate::state::VmState;

type C<'a> = Caller<'a, VmState>;
type E = wasmtime::Result<i32>;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOENT: i32 = 44;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

/// The error `proc_exit` raises to stop the guest.
#[derive(Debug, thiserror::Error)]
#[error("plugin called proc_exit({0})")]
pub(crate) struct ProcExit(pub(crate) i32);

fn fd_write(c: &mut C<'_>, fd: i32, iovs: i32, n: i32, nwritten: i32) -> E {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Ok(BADF),
    };
    let (mem, state) = split(c)?;
    let mut out = Vec::new();
    for i in 0..n.max(0) {
        let Ok(iov) = slice(mem, iovs.wrapping_add(i.wrapping_mul(8)), 8) else {
            return Ok(FAULT);
        };
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Ok(data) = slice(mem, ptr, len) else {
            return Ok(FAULT);
        };
        out.extend_from_slice(data);
    }
    let total = out.len() as u32;
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    let prefix = state.log_prefix();
    state
        .host
        .log(&prefix, level, &String::from_utf8_lossy(&out));
    Ok(if put_u32(mem, nwritten, total).is_ok() {
        SUCCESS
    } else {
        FAULT
    })
}

fn environ(state: &VmState) -> Vec<Vec<u8>> {
    state
        .plugin
        .config
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}\0").into_bytes())
        .collect()
}

fn environ_sizes_get(c: &mut C<'_>, countp: i32, sizep: i32) -> E {
    let (mem, state) = split(c)?;
    let env = environ(state);
    let size: usize = env.iter().map(Vec::len).sum();
    let ok = put_u32(mem, countp, env.len() as u32).and_then(|_| put_u32(mem, sizep, size as u32));
    Ok(if ok.is_ok() { SUCCESS } else { FAULT })
}

fn environ_get(c: &mut C<'_>, ptrs: i32, buf: i32) -> E {
    let (mem, state) = split(c)?;
    let mut at = buf as u32;
    for (i, entry) in environ(state).iter().enumerate() {
        let p = at as usize;
        let Some(dst) = p
            .checked_add(entry.len())
            .and_then(|end| mem.get_mut(p..end))
        else {
            return Ok(FAULT);
        };
        dst.copy_from_slice(entry);
        if put_u32(mem, ptrs.wrapping_add(4 * i as i32), at).is_err() {
            return Ok(FAULT);
        }
        at = at.wrapping_add(entry.len() as u32);
    }
    Ok(SUCCESS)
}

fn clock_time_get(c: &mut C<'_>, id: i32, out: i32) -> E {
    let ns = match id {
        0 => super::env::wall_clock_ns(),
        1 => {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
        }
        _ => return Ok(NOTSUP),
    };
    let (mem, _) = split(c)?;
    Ok(if put_u64(mem, out, ns).is_ok() {
        SUCCESS
    } else {
        FAULT
    })
}

fn random_get(c: &mut C<'_>, buf: i32, len: i32) -> E {
    if len as u32 > 64 * 1024 {
        return Ok(INVAL);
    }
    let (mem, _) = split(c)?;
    let p = buf as u32 as usize;
    let Some(dst) = p
        .checked_add(len as u32 as usize)
        .and_then(|end| mem.get_mut(p..end))
    else {
        return Ok(FAULT);
    };
    Ok(if getrandom::fill(dst).is_ok() {
        SUCCESS
    } else {
        NOSYS
    })
}

fn fd_fdstat_get(c: &mut C<'_>, fd: i32, out: i32) -> E {
    if fd != 1 && fd != 2 {
        return Ok(BADF);
    }
    let (mem, _) = split(c)?;
    let p = out as u32 as usize;
    let Some(dst) = p.checked_add(24).and_then(|end| mem.get_mut(p..end)) else {
        return Ok(FAULT);
    };
    dst.fill(0);
    // filetype 0 (unknown, as cpp-host), rights_base = FD_WRITE (bit 6)
    dst[8..16].copy_from_slice(&64u64.to_le_bytes());
    Ok(SUCCESS)
}

/// Every other preview1 function: signature and the errno it returns.
const STUBS: &[(&str, &[ValType], i32)] = {
    use ValType::{I32, I64};
    &[
        ("fd_read", &[I32, I32, I32, I32], NOSYS),
        ("fd_pread", &[I32, I32, I32, I64, I32], NOSYS),
        ("fd_pwrite", &[I32, I32, I32, I64, I32], NOSYS),
        ("fd_seek", &[I32, I64, I32, I32], SUCCESS),
        ("fd_close", &[I32], SUCCESS),
        ("fd_tell", &[I32, I32], NOSYS),
        ("fd_sync", &[I32], SUCCESS),
        ("fd_datasync", &[I32], SUCCESS),
        ("fd_advise", &[I32, I64, I64, I32], NOSYS),
        ("fd_allocate", &[I32, I64, I64], NOSYS),
        ("fd_fdstat_set_flags", &[I32, I32], NOSYS),
        ("fd_fdstat_set_rights", &[I32, I64, I64], NOSYS),
        ("fd_filestat_get", &[I32, I32], BADF),
        ("fd_filestat_set_size", &[I32, I64], NOSYS),
        ("fd_filestat_set_times", &[I32, I64, I64, I32], NOSYS),
        ("fd_prestat_get", &[I32, I32], BADF),
        ("fd_prestat_dir_name", &[I32, I32, I32], NOSYS),
        ("fd_readdir", &[I32, I32, I32, I64, I32], NOSYS),
        ("fd_renumber", &[I32, I32], NOSYS),
        ("path_create_directory", &[I32, I32, I32], NOENT),
        ("path_filestat_get", &[I32, I32, I32, I32, I32], NOENT),
        (
            "path_filestat_set_times",
            &[I32, I32, I32, I32, I64, I64, I32],
            NOENT,
        ),
        ("path_link", &[I32, I32, I32, I32, I32, I32, I32], NOENT),
        (
            "path_open",
            &[I32, I32, I32, I32, I32, I64, I64, I32, I32],
            NOENT,
        ),
        ("path_readlink", &[I32, I32, I32, I32, I32, I32], NOENT),
        ("path_remove_directory", &[I32, I32, I32], NOENT),
        ("path_rename", &[I32, I32, I32, I32, I32, I32], NOENT),
        ("path_symlink", &[I32, I32, I32, I32, I32], NOENT),
        ("path_unlink_file", &[I32, I32, I32], NOENT),
        ("proc_raise", &[I32], NOSYS),
        ("sock_accept", &[I32, I32, I32], NOTSUP),
        ("sock_recv", &[I32, I32, I32, I32, I32, I32], NOTSUP),
        ("sock_send", &[I32, I32, I32, I32, I32], NOTSUP),
        ("sock_shutdown", &[I32, I32], NOTSUP),
    ]
};

pub(super) fn define(l: &mut Linker<VmState>, m: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, nw: i32| fd_write(&mut c, fd, iovs, n, nw),
    )?;
    l.func_wrap(m, "environ_sizes_get", |mut c: C<'_>, a: i32, b: i32| {
        environ_sizes_get(&mut c, a, b)
    })?;
    l.func_wrap(m, "environ_get", |mut c: C<'_>, a: i32, b: i32| {
        environ_get(&mut c, a, b)
    })?;
    l.func_wrap(m, "args_sizes_get", |mut c: C<'_>, a: i32, b: i32| -> E {
        let (mem, _) = split(&mut c)?;
        Ok(
            if put_u32(mem, a, 0).and_then(|_| put_u32(mem, b, 0)).is_ok() {
                SUCCESS
            } else {
                FAULT
            },
        )
    })?;
    l.func_wrap(m, "args_get", |_c: C<'_>, _a: i32, _b: i32| -> i32 {
        SUCCESS
    })?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, out: i32| clock_time_get(&mut c, id, out),
    )?;
    l.func_wrap(m, "clock_res_get", |mut c: C<'_>, id: i32, out: i32| -> E {
        if id != 0 && id != 1 {
            return Ok(NOTSUP);
        }
        let (mem, _) = split(&mut c)?;
        Ok(if put_u64(mem, out, 1).is_ok() {
            SUCCESS
        } else {
            FAULT
        })
    })?;
    l.func_wrap(m, "random_get", |mut c: C<'_>, buf: i32, len: i32| {
        random_get(&mut c, buf, len)
    })?;
    l.func_wrap(m, "sched_yield", |_c: C<'_>| -> i32 { SUCCESS })?;
    l.func_wrap(
        m,
        "poll_oneoff",
        |mut c: C<'_>, _in: i32, _out: i32, _n: i32, nevents: i32| -> E {
            let (mem, _) = split(&mut c)?;
            Ok(if put_u32(mem, nevents, 0).is_ok() {
                SUCCESS
            } else {
                FAULT
            })
        },
    )?;
    l.func_wrap(m, "fd_fdstat_get", |mut c: C<'_>, fd: i32, out: i32| {
        fd_fdstat_get(&mut c, fd, out)
    })?;
    l.func_wrap(
        m,
        "proc_exit",
        |mut c: C<'_>, code: i32| -> wasmtime::Result<()> {
            // Not a plugin log line (Envoy prints none): the trap that follows is reported
            // with the callback that made it.
            tracing::debug!(plugin = %c.data().plugin_name(), code, "plugin called proc_exit");
            c.data_mut().exited = Some(code);
            Err(wasmtime::Error::new(ProcExit(code)))
        },
    )?;
    let engine = l.engine().clone();
    for (name, params, errno) in STUBS {
        let ty = FuncType::new(&engine, params.iter().cloned(), [ValType::I32]);
        let errno = *errno;
        l.func_new(m, name, ty, move |_c, _params, results| {
            results[0] = Val::I32(errno);
            Ok(())
        })?;
    }
    Ok(())
}
