//! Buffer imports (ABI doc 2.2) and the 0.1.0 `proxy_get_configuration`.

use wasmtime::{Caller, Linker};

use super::mem::{copy_out, put_u32, running, slice, split, st};
use crate::abi::{BufferType, Status};
use crate::state::{Phase, VmState};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

/// The buffer readable now, if any.
fn buffer_ref(state: &VmState, bt: BufferType) -> Option<&[u8]> {
    match bt.stream_slot() {
        Some(slot) => state.context().and_then(|c| c.buffers[slot].as_deref()),
        None => match bt {
            BufferType::HttpCallResponseBody => {
                state.call.http_response.as_ref().map(|r| r.body.as_slice())
            }
            BufferType::GrpcReceiveBuffer => state.call.grpc_message.as_deref(),
            // Envoy serves the VM configuration at any time.
            BufferType::VmConfiguration => Some(&state.plugin.config.vm_configuration),
            BufferType::PluginConfiguration if state.phase == Phase::Configure => {
                Some(&state.current_plugin().config.configuration)
            }
            BufferType::CallData => state.call.foreign_args.as_deref(),
            _ => None,
        },
    }
}

fn get_bytes(c: &mut C<'_>, bt: i32, start: i32, max: i32, pp: i32, lp: i32) -> R {
    running(c)?;
    let Some(bt) = BufferType::from_i32(bt) else {
        return st(Status::BadArgument);
    };
    let Some(buf) = buffer_ref(c.data(), bt) else {
        return st(Status::NotFound);
    };
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    let bytes = if start >= buf.len() {
        Vec::new()
    } else {
        buf[start..buf.len().min(start.saturating_add(max))].to_vec()
    };
    copy_out(c, &bytes, pp, lp).map(|s| s as i32)
}

fn set_bytes(c: &mut C<'_>, bt: i32, start: i32, size: i32, dp: i32, dl: i32) -> R {
    running(c)?;
    let Some(bt) = BufferType::from_i32(bt) else {
        return st(Status::BadArgument);
    };
    let (mem, state) = split(c)?;
    let data = match slice(mem, dp, dl) {
        Ok(d) => d,
        Err(s) => return st(s),
    };
    let Some(slot) = bt.stream_slot() else {
        return st(Status::BadArgument);
    };
    let Some(ctx) = state.context_mut() else {
        return st(Status::NotFound);
    };
    let Some(buf) = ctx.buffers[slot].as_mut() else {
        return st(Status::NotFound);
    };
    ctx.buffers_modified[slot] = true;
    let (start, size) = (start as u32 as usize, size as u32 as usize);
    if start == 0 {
        // prepend (size 0), replace the first `size` bytes, or replace all
        let drain = size.min(buf.len());
        buf.splice(0..drain, data.iter().copied());
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
    } else {
        // Envoy does not support edits in the middle of a buffer.
        return st(Status::BadArgument);
    }
    st(Status::Ok)
}

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, bt: i32, start: i32, max: i32, pp: i32, lp: i32| {
            get_bytes(&mut c, bt, start, max, pp, lp)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, bt: i32, start: i32, size: i32, dp: i32, dl: i32| {
            set_bytes(&mut c, bt, start, size, dp, dl)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, bt: i32, lenp: i32, flagsp: i32| -> R {
            running(&c)?;
            let Some(bt) = BufferType::from_i32(bt) else {
                return st(Status::BadArgument);
            };
            let Some(len) = buffer_ref(c.data(), bt).map(<[u8]>::len) else {
                return st(Status::NotFound);
            };
            let (mem, _) = split(&mut c)?;
            st(put_u32(mem, lenp, len as u32)
                .and_then(|_| put_u32(mem, flagsp, 0))
                .map(|_| Status::Ok)
                .unwrap_or_else(|s| s))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut c: C<'_>, pp: i32, lp: i32| -> R {
            running(&c)?;
            let state = c.data();
            let bytes = match state.phase {
                Phase::VmStart => state.plugin.config.vm_configuration.clone(),
                _ => state.current_plugin().config.configuration.clone(),
            };
            copy_out(&mut c, &bytes, pp, lp).map(|s| s as i32)
        },
    )?;
    Ok(())
}
