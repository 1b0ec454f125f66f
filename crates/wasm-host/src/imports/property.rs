//! `proxy_get_property` / `proxy_set_property` (ABI doc 2.5, 5): header-derived request and
//! response attributes, `plugin_*`, `xds.node` (and the legacy top-level `node`), values set by
//! the plugin, then whatever the proxy knows about the stream.

use wasmtime::{Caller, Linker};

use super::mem::{copy_out, running, slice, split, st};
use crate::abi::Status;
use crate::headers::HeaderMap;
use crate::properties::{PropertyValue, split_path};
use crate::state::{Context, ContextKind, VmState};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

fn from_request(headers: &HeaderMap, path: &[&[u8]]) -> Option<PropertyValue> {
    let h = |k: &[u8]| headers.get(k).map(|v| PropertyValue::Bytes(v.to_vec()));
    let full_path = || headers.get(b":path").unwrap_or_default();
    match path {
        [b"path"] => h(b":path"),
        [b"url_path"] => {
            let p = full_path();
            Some(PropertyValue::Bytes(
                p.split(|b| *b == b'?').next().unwrap_or_default().to_vec(),
            ))
        }
        [b"query"] => {
            let p = full_path();
            let q = p
                .iter()
                .position(|b| *b == b'?')
                .map(|i| p[i + 1..].to_vec())
                .unwrap_or_default();
            Some(PropertyValue::Bytes(q))
        }
        [b"host"] => h(b":authority"),
        [b"scheme"] => h(b":scheme"),
        [b"method"] => h(b":method"),
        [b"referer"] => h(b"referer"),
        [b"useragent"] => h(b"user-agent"),
        [b"id"] => h(b"x-request-id"),
        // The body size: the content-length when there is one, else the bytes received.
        [b"size"] => headers
            .get(b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<i64>().ok())
            .map(PropertyValue::Int),
        [b"headers"] => Some(headers_map(headers)),
        [b"headers", name] => headers.get_joined(name).map(PropertyValue::Bytes),
        _ => None,
    }
}

fn headers_map(headers: &HeaderMap) -> PropertyValue {
    PropertyValue::Map(
        headers
            .iter()
            .filter(|(k, _)| !k.starts_with(b":"))
            .map(|(k, v)| (k.to_vec(), PropertyValue::Bytes(v.to_vec())))
            .collect(),
    )
}

/// Whether `request.<first>` comes from the request headers (Envoy: NotFound once they are
/// no longer available, even where the stream info would know).
fn header_derived(first: &[u8]) -> bool {
    matches!(
        first,
        b"path"
            | b"url_path"
            | b"query"
            | b"host"
            | b"scheme"
            | b"method"
            | b"referer"
            | b"useragent"
            | b"id"
            | b"headers"
    )
}

/// A stream map the plugin may read now.
fn readable(ctx: &Context, slot: usize) -> Option<&HeaderMap> {
    ctx.maps[slot].as_ref().filter(|_| !ctx.maps_released[slot])
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(code: i64) -> i64 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

fn from_response(ctx: &Context, path: &[&[u8]]) -> Option<PropertyValue> {
    let headers = readable(ctx, 2);
    match path {
        // `grpc-status` from the trailers, then the headers, else from the HTTP status.
        [b"grpc_status"] => {
            let grpc = |m: Option<&HeaderMap>| {
                m?.get(b"grpc-status")
                    .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<i64>().ok())
            };
            grpc(readable(ctx, 3))
                .or_else(|| grpc(headers))
                .or_else(|| {
                    let code = match from_response(ctx, &[b"code"]) {
                        Some(PropertyValue::Int(c)) => Some(c),
                        _ => match ctx.props.get(&[b"response", b"code"]) {
                            Some(PropertyValue::Int(c)) => Some(c),
                            _ => None,
                        },
                    };
                    code.map(http_to_grpc_status)
                })
                .map(PropertyValue::Int)
        }
        [b"code"] => headers?
            .get(b":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<i64>().ok())
            .map(PropertyValue::Int),
        [b"headers"] => headers.map(headers_map),
        [b"headers", name] => headers?.get_joined(name).map(PropertyValue::Bytes),
        [b"trailers"] => readable(ctx, 3).map(headers_map),
        [b"trailers", name] => readable(ctx, 3)?.get_joined(name).map(PropertyValue::Bytes),
        _ => None,
    }
}

/// Resolves a property for the effective context.
pub(crate) fn resolve(state: &VmState, raw_path: &[u8]) -> Option<PropertyValue> {
    let path = split_path(raw_path);
    let cfg = &state.current_plugin().config;
    match path.as_slice() {
        [b"plugin_name"] => return Some(PropertyValue::string(cfg.name.clone())),
        [b"plugin_root_id"] => return Some(PropertyValue::string(cfg.root_id.clone())),
        [b"plugin_vm_id"] => return Some(PropertyValue::string(cfg.vm_id.clone())),
        // (Envoy 1.40 no longer answers the legacy top-level `node`.)
        [b"xds", b"node", rest @ ..] => return cfg.node.lookup(rest),
        _ => {}
    }
    let ctx = state.context()?;
    if ctx.kind == ContextKind::Root {
        return None;
    }
    // Envoy: the headers' byte size (every name and value, pseudo-headers included, while
    // the map is available) plus the body bytes received or sent so far.
    let byte_size = |slot: usize| {
        readable(ctx, slot).map_or(0, |m| {
            m.iter()
                .map(|(k, v)| (k.len() + v.len()) as i64)
                .sum::<i64>()
        })
    };
    let counted = |which: &[u8]| match ctx.props.get(&[which, b"size"]) {
        Some(PropertyValue::Int(n)) => n,
        _ => 0,
    };
    match path.as_slice() {
        [b"request", b"total_size"] => {
            return Some(PropertyValue::Int(byte_size(0) + counted(b"request")));
        }
        [b"response", b"total_size"] => {
            return Some(PropertyValue::Int(
                byte_size(2) + byte_size(3) + counted(b"response"),
            ));
        }
        _ => {}
    }
    let derived = match path.as_slice() {
        [b"request", first, ..] if header_derived(first) && readable(ctx, 0).is_none() => {
            return None;
        }
        [b"request", rest @ ..] => readable(ctx, 0).and_then(|h| from_request(h, rest)),
        [b"response", rest @ ..] => from_response(ctx, rest),
        _ => None,
    };
    derived
        .or_else(|| ctx.props.get(&path))
        .or_else(|| match path.as_slice() {
            // Envoy: the filter state object of that key (`filter_state/wasm.<name>`).
            [b"filter_state", key] => state_object(ctx, key).map(PropertyValue::Bytes),
            // Envoy: a name it does not know is looked up as `wasm.<name>` in the filter state
            // (what `proxy_set_property([name])` stored); the value has no fields to select.
            [name] => state_object(ctx, &[b"wasm.", *name].concat()).map(PropertyValue::Bytes),
            _ => None,
        })
}

/// Filter state object `key`: the stream's, or this context's own when the stream has none.
fn state_object(ctx: &crate::state::Context, key: &[u8]) -> Option<Vec<u8>> {
    ctx.props.filter_state(key).or_else(|| {
        ctx.filter_state
            .iter()
            .find(|(k, _)| k.as_slice() == key)
            .map(|(_, v)| v.clone())
    })
}

fn get_property(c: &mut C<'_>, pp: i32, pl: i32, vpp: i32, vlp: i32) -> R {
    running(c)?;
    c.data_mut().materialize_maps();
    let (mem, state) = split(c)?;
    let path = match slice(mem, pp, pl) {
        Ok(p) => p,
        Err(s) => return st(s),
    };
    match resolve(state, path) {
        Some(PropertyValue::Unserializable) => st(Status::SerializationFailure),
        Some(v) => copy_out(c, &v.encode(), vpp, vlp).map(|s| s as i32),
        None => st(Status::NotFound),
    }
}

fn set_property(c: &mut C<'_>, pp: i32, pl: i32, vp: i32, vl: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let (path, value) = match (slice(mem, pp, pl), slice(mem, vp, vl)) {
        (Ok(p), Ok(v)) => (p.to_vec(), v.to_vec()),
        _ => return st(Status::InvalidMemoryAccess),
    };
    let Some(ctx) = state.context_mut().filter(|c| c.kind != ContextKind::Root) else {
        return st(Status::NotFound);
    };
    // Envoy stores it as filter state `wasm.<path>` (segments still NUL-separated), for the
    // whole stream: later plugins read it as property `<path>` or `filter_state/wasm.<path>`.
    let mut end = path.len();
    while end > 0 && path[end - 1] == 0 {
        end -= 1;
    }
    let key = [b"wasm.", &path[..end]].concat();
    if !ctx.props.set_filter_state(key.clone(), value.clone()) {
        match ctx.filter_state.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => ctx.filter_state.push((key, value)),
        }
    }
    st(Status::Ok)
}

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, vpp: i32, vlp: i32| get_property(&mut c, pp, pl, vpp, vlp),
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| set_property(&mut c, pp, pl, vp, vl),
    )?;
    Ok(())
}
