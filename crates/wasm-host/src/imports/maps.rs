//! Header/trailer/metadata map imports (ABI doc 2.3).

use wasmtime::{Caller, Linker};

use super::mem::{copy_out, copy_out_from, running, slice, split, st, write_u32};
use crate::abi::{AbiVersion, MapType, Status};
use crate::headers::HeaderMap;
use crate::pairs;
use crate::state::{ContextKind, VmState};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

macro_rules! try_st {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return st(s),
        }
    };
}

/// The map readable now, if any.
pub(super) fn map_ref(state: &VmState, mt: MapType) -> Option<&HeaderMap> {
    match mt.stream_slot() {
        Some(slot) => state
            .context()
            .filter(|c| !c.maps_released[slot])
            .and_then(|c| c.maps[slot].as_ref()),
        None => match mt {
            MapType::HttpCallResponseHeaders => {
                state.call.http_response.as_ref().map(|r| &r.headers)
            }
            MapType::HttpCallResponseTrailers => {
                state.call.http_response.as_ref().map(|r| &r.trailers)
            }
            _ => state.call.grpc_metadata.as_ref(),
        },
    }
}

/// Whether a stream map can be asked about now: it is there, or the stream is logging (in
/// `on_log` a missing map is only absent: NotFound). Envoy answers BadArgument for a map that
/// is not available in the current callback (request headers after their callback continued,
/// response headers during the request...).
fn available(state: &VmState, mt: MapType) -> bool {
    match mt.stream_slot() {
        Some(slot) => state.context().is_some_and(|c| {
            c.logging || (!c.maps_released[slot] && (c.maps[slot].is_some() || c.maps_lazy[slot]))
        }),
        // Call responses and gRPC metadata: a missing one is only absent (NotFound).
        None => true,
    }
}

/// The map writable now. Call-response and gRPC maps are read-only (BadArgument, as Envoy);
/// trailers are created on first write (Envoy adds them from a body callback with eos).
fn map_mut(state: &mut VmState, mt: MapType) -> Result<&mut HeaderMap, Status> {
    let slot = mt.stream_slot().ok_or(Status::BadArgument)?;
    let ctx = state.context_mut().ok_or(Status::BadArgument)?;
    if ctx.kind != ContextKind::Http {
        return Err(Status::BadArgument);
    }
    if ctx.maps_released[slot] {
        return Err(Status::BadArgument);
    }
    let is_trailers = matches!(mt, MapType::RequestTrailers | MapType::ResponseTrailers);
    if ctx.maps[slot].is_some() || is_trailers {
        ctx.maps_modified[slot] = true;
    }
    match &mut ctx.maps[slot] {
        Some(m) => Ok(m),
        slot @ None if is_trailers => Ok(slot.insert(HeaderMap::new())),
        None => Err(Status::BadArgument),
    }
}

fn get_pairs(c: &mut C<'_>, mt: i32, pp: i32, lp: i32) -> R {
    running(c)?;
    c.data_mut().materialize_maps();
    let Some(mt) = MapType::from_i32(mt) else {
        return st(Status::BadArgument);
    };
    let bytes = match map_ref(c.data(), mt) {
        Some(m) if !m.is_empty() => pairs::encode(m.iter()),
        _ => Vec::new(),
    };
    copy_out(c, &bytes, pp, lp).map(|s| s as i32)
}

fn set_pairs(c: &mut C<'_>, mt: i32, p: i32, l: i32) -> R {
    running(c)?;
    c.data_mut().materialize_maps();
    let Some(mt) = MapType::from_i32(mt) else {
        return st(Status::BadArgument);
    };
    let (mem, state) = split(c)?;
    let entries = pairs::decode(try_st!(slice(mem, p, l))).unwrap_or_default();
    let map = try_st!(map_mut(state, mt));
    map.set_entries(entries);
    st(Status::Ok)
}

fn get_value(c: &mut C<'_>, mt: i32, kp: i32, kl: i32, vpp: i32, vlp: i32) -> R {
    running(c)?;
    c.data_mut().materialize_maps();
    let Some(mt) = MapType::from_i32(mt) else {
        return st(Status::BadArgument);
    };
    let (mem, state) = split(c)?;
    let key = try_st!(slice(mem, kp, kl));
    let len = map_ref(state, mt).and_then(|m| m.get(key)).map(<[u8]>::len);
    match len {
        Some(len) => {
            // The key must be found again after the guest allocator ran: copy it (on the
            // stack when short) instead of copying the value.
            let mut buf = [0u8; 128];
            let heap;
            let key: &[u8] = if key.len() <= buf.len() {
                buf[..key.len()].copy_from_slice(key);
                &buf[..key.len()]
            } else {
                heap = key.to_vec();
                &heap
            };
            copy_out_from(
                c,
                len,
                |st| map_ref(st, mt).and_then(|m| m.get(key)),
                vpp,
                vlp,
            )
            .map(|s| s as i32)
        }
        // 0.1.0: Envoy answers Ok with an empty value.
        None if state.abi == AbiVersion::V0_1_0 => copy_out(c, &[], vpp, vlp).map(|s| s as i32),
        None if !available(state, mt) => st(Status::BadArgument),
        None => st(Status::NotFound),
    }
}

#[derive(Clone, Copy)]
enum Edit {
    Add,
    Replace,
}

fn edit_value(c: &mut C<'_>, edit: Edit, mt: i32, a: [i32; 4]) -> R {
    running(c)?;
    c.data_mut().materialize_maps();
    let Some(mt) = MapType::from_i32(mt) else {
        return st(Status::BadArgument);
    };
    let (mem, state) = split(c)?;
    let key = try_st!(slice(mem, a[0], a[1]));
    let value = try_st!(slice(mem, a[2], a[3]));
    let map = try_st!(map_mut(state, mt));
    match edit {
        Edit::Add => map.add(key, value),
        Edit::Replace => map.replace(key, value),
    }
    st(Status::Ok)
}

fn remove_value(c: &mut C<'_>, mt: i32, kp: i32, kl: i32) -> R {
    running(c)?;
    c.data_mut().materialize_maps();
    let Some(mt) = MapType::from_i32(mt) else {
        return st(Status::BadArgument);
    };
    let (mem, state) = split(c)?;
    let key = try_st!(slice(mem, kp, kl));
    // Removing from an absent trailers map must not create it.
    if let Some(slot) = mt.stream_slot()
        && state.context().is_some_and(|ctx| ctx.maps[slot].is_none())
    {
        return st(Status::Ok);
    }
    let map = try_st!(map_mut(state, mt));
    map.remove(key);
    st(Status::Ok)
}

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, mt: i32, pp: i32, lp: i32| get_pairs(&mut c, mt, pp, lp),
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, mt: i32, p: i32, n: i32| set_pairs(&mut c, mt, p, n),
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, mt: i32, kp: i32, kl: i32, vpp: i32, vlp: i32| {
            get_value(&mut c, mt, kp, kl, vpp, vlp)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, mt: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            edit_value(&mut c, Edit::Add, mt, [kp, kl, vp, vl])
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, mt: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            edit_value(&mut c, Edit::Replace, mt, [kp, kl, vp, vl])
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, mt: i32, kp: i32, kl: i32| remove_value(&mut c, mt, kp, kl),
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, mt: i32, sp: i32| -> R {
            running(&c)?;
            c.data_mut().materialize_maps();
            let Some(mt) = MapType::from_i32(mt) else {
                return st(Status::BadArgument);
            };
            let size = map_ref(c.data(), mt).map(HeaderMap::byte_size).unwrap_or(0);
            write_u32(&mut c, sp, size as u32).map(|s| s as i32)
        },
    )?;
    Ok(())
}
