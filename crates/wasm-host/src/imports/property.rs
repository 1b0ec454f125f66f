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

fn from_response(ctx: &Context, path: &[&[u8]]) -> Option<PropertyValue> {
    let headers = ctx.maps[2].as_ref();
    match path {
        [b"code"] => headers?
            .get(b":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<i64>().ok())
            .map(PropertyValue::Int),
        [b"headers"] => headers.map(headers_map),
        [b"headers", name] => headers?.get_joined(name).map(PropertyValue::Bytes),
        [b"trailers", name] => ctx.maps[3]
            .as_ref()?
            .get_joined(name)
            .map(PropertyValue::Bytes),
        _ => None,
    }
}

/// Resolves a property for the effective context.
pub(crate) fn resolve(state: &VmState, raw_path: &[u8]) -> Option<PropertyValue> {
    let path = split_path(raw_path);
    let cfg = &state.plugin.config;
    match path.as_slice() {
        [b"plugin_name"] => return Some(PropertyValue::string(cfg.name.clone())),
        [b"plugin_root_id"] => return Some(PropertyValue::string(cfg.root_id.clone())),
        [b"plugin_vm_id"] => return Some(PropertyValue::string(cfg.vm_id.clone())),
        [b"xds", b"node", rest @ ..] | [b"node", rest @ ..] => return cfg.node.lookup(rest),
        _ => {}
    }
    let ctx = state.context()?;
    if ctx.kind == ContextKind::Root {
        return None;
    }
    if let Some((_, v)) = ctx
        .filter_state
        .iter()
        .find(|(k, _)| k.as_slice() == raw_path)
    {
        return Some(PropertyValue::Bytes(v.clone()));
    }
    let derived = match path.as_slice() {
        [b"request", rest @ ..] => ctx.maps[0].as_ref().and_then(|h| from_request(h, rest)),
        [b"response", rest @ ..] => from_response(ctx, rest),
        _ => None,
    };
    derived.or_else(|| ctx.props.get(&path))
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
    match ctx.filter_state.iter_mut().find(|(k, _)| *k == path) {
        Some((_, v)) => *v = value,
        None => ctx.filter_state.push((path, value)),
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
