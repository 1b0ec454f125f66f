//! `env.proxy_*` imports other than maps, buffers and properties: logging, time, stream
//! control, local replies, callouts, shared data and queues, metrics, context control,
//! foreign functions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::mem::{copy_out, running, slice, split, st, write_u32};
use crate::abi::{LogLevel, MetricType, Status, StreamType};
use crate::headers::HeaderMap;
use crate::host::{GrpcCall, HttpCall};
use crate::pairs;
use crate::properties::PropertyValue;
use crate::shared::QueueNotifier;
use crate::state::{Effect, LocalReply, VmState};

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

struct NoNotify;
impl QueueNotifier for NoNotify {
    fn notify(&self, _root: u32, _queue: u32) {}
}

fn stream_type(v: i32) -> Option<StreamType> {
    Some(match v {
        0 => StreamType::HttpRequest,
        1 => StreamType::HttpResponse,
        2 => StreamType::Downstream,
        3 => StreamType::Upstream,
        _ => return None,
    })
}

fn push_effect(c: &mut C<'_>, f: impl FnOnce(u32) -> Effect) -> R {
    let id = c.data().context_id();
    c.data_mut().effects.push(f(id));
    st(Status::Ok)
}

fn log(c: &mut C<'_>, level: i32, ptr: i32, len: i32) -> R {
    let Some(level) = LogLevel::from_i32(level) else {
        return st(Status::BadArgument);
    };
    let (mem, state) = split(c)?;
    let msg = try_st!(slice(mem, ptr, len));
    let msg = String::from_utf8_lossy(msg);
    let prefix = state.log_prefix();
    state.host.log(&prefix, level, &msg);
    st(Status::Ok)
}

fn http_call(c: &mut C<'_>, a: [i32; 8], timeout_ms: i32, token_ptr: i32) -> R {
    running(c)?;
    if write_u32(c, token_ptr, 0)? != Status::Ok {
        return st(Status::InvalidMemoryAccess);
    }
    let (mem, state) = split(c)?;
    let upstream = String::from_utf8_lossy(try_st!(slice(mem, a[0], a[1]))).into_owned();
    let Some(headers) = pairs::decode(try_st!(slice(mem, a[2], a[3]))) else {
        return st(Status::BadArgument);
    };
    let body = try_st!(slice(mem, a[4], a[5])).to_vec();
    let trailers = pairs::decode(try_st!(slice(mem, a[6], a[7]))).unwrap_or_default();
    let headers = HeaderMap::from_entries(headers);
    if headers.get(b":path").is_none()
        || headers.get(b":method").is_none()
        || headers.get(b":authority").is_none()
    {
        return st(Status::BadArgument);
    }
    if timeout_ms < 0 {
        return st(Status::BadArgument);
    }
    state.next_token = state.next_token.wrapping_add(1).max(1);
    let token = state.next_token;
    let root = state.root_of_current();
    let call = HttpCall {
        token,
        root_context_id: root,
        origin_context_id: state.context_id(),
        upstream,
        headers,
        body,
        trailers: HeaderMap::from_entries(trailers),
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
    };
    try_st!(state.host.dispatch_http_call(call));
    state.calls.insert(token, root);
    write_u32(c, token_ptr, token).map(|s| s as i32)
}

fn grpc_call(c: &mut C<'_>, a: [i32; 10], timeout_ms: i32, token_ptr: i32) -> R {
    running(c)?;
    if write_u32(c, token_ptr, 0)? != Status::Ok {
        return st(Status::InvalidMemoryAccess);
    }
    let (mem, state) = split(c)?;
    let upstream = try_st!(slice(mem, a[0], a[1])).to_vec();
    let service = String::from_utf8_lossy(try_st!(slice(mem, a[2], a[3]))).into_owned();
    let method = String::from_utf8_lossy(try_st!(slice(mem, a[4], a[5]))).into_owned();
    let md = pairs::decode(try_st!(slice(mem, a[6], a[7]))).unwrap_or_default();
    let message = try_st!(slice(mem, a[8], a[9])).to_vec();
    state.next_token = state.next_token.wrapping_add(1).max(1);
    let token = state.next_token;
    let root = state.root_of_current();
    let call = GrpcCall {
        token,
        root_context_id: root,
        upstream,
        service,
        method,
        initial_metadata: HeaderMap::from_entries(md),
        message,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
    };
    try_st!(state.host.dispatch_grpc_call(call));
    state.calls.insert(token, root);
    write_u32(c, token_ptr, token).map(|s| s as i32)
}

fn local_response(c: &mut C<'_>, status: i32, a: [i32; 6], grpc: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let details = String::from_utf8_lossy(try_st!(slice(mem, a[0], a[1])))
        .chars()
        .map(|ch| if ch.is_whitespace() { '_' } else { ch })
        .collect();
    let body = try_st!(slice(mem, a[2], a[3])).to_vec();
    let headers = pairs::decode(try_st!(slice(mem, a[4], a[5])))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let reply = LocalReply {
        status: status as u32,
        details,
        body,
        headers,
        grpc_status: (grpc >= 0).then_some(grpc as u32),
    };
    let context_id = state.context_id();
    state.effects.push(Effect::LocalReply { context_id, reply });
    st(Status::Ok)
}

fn get_shared_data(c: &mut C<'_>, kp: i32, kl: i32, vpp: i32, vlp: i32, casp: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let key = try_st!(slice(mem, kp, kl));
    let found = state
        .plugin
        .runtime
        .inner
        .shared
        .get(&state.plugin.config.vm_id, key);
    let Some((value, cas)) = found else {
        return st(Status::NotFound);
    };
    if write_u32(c, casp, cas)? != Status::Ok {
        return st(Status::InvalidMemoryAccess);
    }
    copy_out(c, &value, vpp, vlp).map(|s| s as i32)
}

fn set_shared_data(c: &mut C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let key = try_st!(slice(mem, kp, kl));
    let value = try_st!(slice(mem, vp, vl));
    st(state
        .plugin
        .runtime
        .inner
        .shared
        .set(&state.plugin.config.vm_id, key, value, cas as u32))
}

fn register_queue(c: &mut C<'_>, np: i32, nl: i32, tokp: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let name = try_st!(slice(mem, np, nl));
    let notifier: Arc<dyn QueueNotifier> = state
        .host
        .queue_notifier()
        .unwrap_or_else(|| Arc::new(NoNotify));
    let root = state.root_of_current();
    let id = state.plugin.runtime.inner.shared.register_queue(
        &state.plugin.config.vm_id,
        name,
        notifier,
        root,
    );
    write_u32(c, tokp, id).map(|s| s as i32)
}

fn resolve_queue(c: &mut C<'_>, vp: i32, vl: i32, np: i32, nl: i32, tokp: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let vm_id = try_st!(slice(mem, vp, vl));
    let name = try_st!(slice(mem, np, nl));
    let vm_id = if vm_id.is_empty() {
        state.plugin.config.vm_id.clone()
    } else {
        String::from_utf8_lossy(vm_id).into_owned()
    };
    let Some(id) = state
        .plugin
        .runtime
        .inner
        .shared
        .resolve_queue(&vm_id, name)
    else {
        return st(Status::NotFound);
    };
    write_u32(c, tokp, id).map(|s| s as i32)
}

fn enqueue(c: &mut C<'_>, id: i32, p: i32, l: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let data = try_st!(slice(mem, p, l));
    st(state.plugin.runtime.inner.shared.enqueue(id as u32, data))
}

fn dequeue(c: &mut C<'_>, id: i32, pp: i32, lp: i32) -> R {
    running(c)?;
    let item = c.data().plugin.runtime.inner.shared.dequeue(id as u32);
    match item {
        Ok(v) => copy_out(c, &v, pp, lp).map(|s| s as i32),
        Err(s) => st(s),
    }
}

fn define_metric(c: &mut C<'_>, kind: i32, np: i32, nl: i32, idp: i32) -> R {
    running(c)?;
    let Some(kind) = MetricType::from_i32(kind) else {
        return st(Status::BadArgument);
    };
    let (mem, state) = split(c)?;
    let name = String::from_utf8_lossy(try_st!(slice(mem, np, nl))).into_owned();
    let (id, metric) = state.plugin.metrics.define(kind, &name);
    state.metric_cache.insert(id, metric);
    write_u32(c, idp, id).map(|s| s as i32)
}

fn metric(c: &mut C<'_>, id: i32) -> Option<Arc<crate::metrics::Metric>> {
    let state = c.data_mut();
    if let Some(m) = state.metric_cache.get(&(id as u32)) {
        return Some(m.clone());
    }
    let m = state.plugin.metrics.get(id as u32)?;
    state.metric_cache.insert(id as u32, m.clone());
    Some(m)
}

fn foreign(c: &mut C<'_>, a: [i32; 4], rpp: i32, rlp: i32) -> R {
    running(c)?;
    let (mem, state) = split(c)?;
    let name = String::from_utf8_lossy(try_st!(slice(mem, a[0], a[1]))).into_owned();
    let args = try_st!(slice(mem, a[2], a[3])).to_vec();
    if name == "clear_route_cache" {
        let context_id = state.context_id();
        state.effects.push(Effect::ClearRouteCache { context_id });
        return st(Status::Ok);
    }
    if name == "set_envoy_filter_state" {
        return st(set_envoy_filter_state(state, &args));
    }
    if let Some(result) = expression(state, &name, &args) {
        return match result {
            Ok(bytes) if rpp != 0 => copy_out(c, &bytes, rpp, rlp).map(|s| s as i32),
            Ok(_) => st(Status::Ok),
            Err(s) => st(s),
        };
    }
    // Envoy's built-in foreign functions: zlib `compress` / `uncompress`.
    let builtin = match name.as_str() {
        "compress" => Some(zlib(&args, true)),
        "uncompress" => Some(zlib(&args, false)),
        _ => None,
    };
    if let Some(result) = builtin {
        return match result {
            Ok(bytes) if rpp != 0 => copy_out(c, &bytes, rpp, rlp).map(|s| s as i32),
            Ok(_) => st(Status::Ok),
            Err(()) => st(Status::SerializationFailure),
        };
    }
    match state.host.foreign_function(&name, &args) {
        None => st(Status::NotFound),
        Some(Err(s)) => st(s),
        Some(Ok(result)) if rpp != 0 => copy_out(c, &result, rpp, rlp).map(|s| s as i32),
        Some(Ok(_)) => st(Status::Ok),
    }
}

/// Envoy's CEL foreign functions (`crate::expr`): `expr_create` (the expression text; answers
/// a 4-byte token, BadArgument when it does not parse), `expr_evaluate` (a token; answers the
/// serialized value, NotFound for an unknown token, InternalFailure when evaluation fails, as
/// for a missing attribute), `expr_delete`. `None` for other names.
fn expression(state: &mut VmState, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, Status>> {
    let token = || -> Result<u32, Status> {
        Ok(u32::from_le_bytes(
            args.try_into().map_err(|_| Status::BadArgument)?,
        ))
    };
    Some(match name {
        "expr_create" => std::str::from_utf8(args)
            .map_err(|_| Status::BadArgument)
            .and_then(|src| {
                state
                    .expressions
                    .create(src)
                    .map_err(|_| Status::BadArgument)
            })
            .map(|t| t.to_le_bytes().to_vec()),
        "expr_evaluate" => token().and_then(|t| {
            let e = state.expressions.get(t).ok_or(Status::NotFound)?.clone();
            state.materialize_maps();
            let state = &*state;
            // A header map the plugin can no longer see is an empty map to CEL (Envoy's
            // activation wraps the filter's own header pointers, null once they continued).
            let attr = |path: &[String]| {
                let raw = path.join("\0");
                super::property::resolve(state, raw.as_bytes()).or_else(|| {
                    matches!(
                        raw.as_str(),
                        "request\0headers" | "response\0headers" | "response\0trailers"
                    )
                    .then(|| PropertyValue::Map(Vec::new()))
                })
            };
            crate::expr::eval(&e, &attr)
                .and_then(|v| v.encode())
                .map_err(|_| Status::InternalFailure)
        }),
        "expr_delete" => token().and_then(|t| {
            if state.expressions.delete(t) {
                Ok(Vec::new())
            } else {
                Err(Status::NotFound)
            }
        }),
        _ => return None,
    })
}

/// Envoy's `SetEnvoyFilterStateArguments` (source/extensions/common/wasm/ext).
#[derive(Clone, PartialEq, prost::Message)]
struct SetEnvoyFilterStateArguments {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    value: String,
    #[prost(int32, tag = "3")]
    span: i32,
}

/// The filter-state objects the proxy makes from a string, as Envoy's object factories do.
const FILTER_STATE_KEYS: &[&str] = &["envoy.tcp_proxy.cluster"];

/// `set_envoy_filter_state`: BadArgument when the arguments do not parse, NotFound for a key
/// with no object factory (as Envoy answers).
fn set_envoy_filter_state(state: &mut VmState, args: &[u8]) -> Status {
    use prost::Message;
    let Ok(a) = SetEnvoyFilterStateArguments::decode(args) else {
        return Status::BadArgument;
    };
    if !FILTER_STATE_KEYS.contains(&a.path.as_str()) {
        return Status::NotFound;
    }
    let context_id = state.context_id();
    state.effects.push(Effect::FilterState {
        context_id,
        key: a.path,
        value: a.value,
    });
    Status::Ok
}

/// The wall clock in nanoseconds since the epoch, at Envoy's resolution: its system clock
/// (libc++'s `system_clock`) counts microseconds, so plugins see whole microseconds.
pub(crate) fn wall_clock_ns() -> u64 {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    us * 1000
}

/// zlib's `compress` (default level) or `uncompress`, as Envoy's foreign functions of those
/// names; a stream that does not decode is an error.
fn zlib(input: &[u8], compress: bool) -> Result<Vec<u8>, ()> {
    use std::io::{Read, Write};
    if compress {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(input).map_err(|_| ())?;
        e.finish().map_err(|_| ())
    } else {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(input)
            .read_to_end(&mut out)
            .map_err(|_| ())?;
        Ok(out)
    }
}

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, p: i32, n: i32| log(&mut c, level, p, n),
    )?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, p: i32| -> R {
        let level = (c.data().host.log_level() as u32).min(5);
        write_u32(&mut c, p, level).map(|s| s as i32)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, p: i32| -> R {
            running(&c)?;
            let ns = wall_clock_ns();
            let (mem, _) = split(&mut c)?;
            st(super::mem::put_u64(mem, p, ns)
                .map(|_| Status::Ok)
                .unwrap_or_else(|s| s))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> R {
            running(&c)?;
            let root = c.data().root_of_current();
            c.data_mut().tick_period_ms.insert(root, ms as u32);
            st(Status::Ok)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, t: i32| -> R {
            running(&c)?;
            match stream_type(t) {
                Some(StreamType::Upstream) => st(Status::Unimplemented),
                Some(stream) => {
                    push_effect(&mut c, |context_id| Effect::Continue { context_id, stream })
                }
                None => st(Status::BadArgument),
            }
        },
    )?;
    l.func_wrap("env", "proxy_close_stream", |mut c: C<'_>, t: i32| -> R {
        running(&c)?;
        match stream_type(t) {
            Some(stream) => push_effect(&mut c, |context_id| Effect::Close { context_id, stream }),
            None => st(Status::BadArgument),
        }
    })?;
    l.func_wrap("env", "proxy_continue_request", |mut c: C<'_>| -> R {
        running(&c)?;
        push_effect(&mut c, |context_id| Effect::Continue {
            context_id,
            stream: StreamType::HttpRequest,
        })
    })?;
    l.func_wrap("env", "proxy_continue_response", |mut c: C<'_>| -> R {
        running(&c)?;
        push_effect(&mut c, |context_id| Effect::Continue {
            context_id,
            stream: StreamType::HttpResponse,
        })
    })?;
    l.func_wrap("env", "proxy_clear_route_cache", |mut c: C<'_>| -> R {
        running(&c)?;
        push_effect(&mut c, |context_id| Effect::ClearRouteCache { context_id })
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32| { local_response(&mut c, code, [dp, dl, bp, bl, hp, hl], grpc) },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, codep: i32, mpp: i32, mlp: i32| -> R {
            running(&c)?;
            let (code, msg) = c.data().status.clone();
            if write_u32(&mut c, codep, code)? != Status::Ok {
                return st(Status::InvalidMemoryAccess);
            }
            copy_out(&mut c, &msg, mpp, mlp).map(|s| s as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         tok: i32| { http_call(&mut c, [up, ul, hp, hl, bp, bl, tp, tl], timeout, tok) },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         msgp: i32,
         msgl: i32,
         timeout: i32,
         tok: i32| {
            grpc_call(
                &mut c,
                [up, ul, sp, sl, mp, ml, ip, il, msgp, msgl],
                timeout,
                tok,
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |c: C<'_>,
         _up: i32,
         _ul: i32,
         _sp: i32,
         _sl: i32,
         _mp: i32,
         _ml: i32,
         _ip: i32,
         _il: i32,
         _tok: i32|
         -> R {
            running(&c)?;
            // Streaming gRPC is not offered yet: "could not start", which every SDK handles.
            st(Status::InternalFailure)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |c: C<'_>, _t: i32, _p: i32, _l: i32, _e: i32| -> R {
            running(&c)?;
            st(Status::NotFound)
        },
    )?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        l.func_wrap("env", name, |mut c: C<'_>, t: i32| -> R {
            running(&c)?;
            let res = c.data_mut().host.cancel_grpc(t as u32);
            c.data_mut().calls.remove(&(t as u32));
            st(res.map(|_| Status::Ok).unwrap_or_else(|s| s))
        })?;
    }
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vpp: i32, vlp: i32, casp: i32| {
            get_shared_data(&mut c, kp, kl, vpp, vlp, casp)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
            set_shared_data(&mut c, kp, kl, vp, vl, cas)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, tp: i32| register_queue(&mut c, np, nl, tp),
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, tp: i32| {
            resolve_queue(&mut c, vp, vl, np, nl, tp)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, p: i32, n: i32| enqueue(&mut c, id, p, n),
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, pp: i32, lp: i32| dequeue(&mut c, id, pp, lp),
    )?;
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, k: i32, np: i32, nl: i32, idp: i32| define_metric(&mut c, k, np, nl, idp),
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, delta: i64| -> R {
            running(&c)?;
            st(metric(&mut c, id)
                .map(|m| m.increment(delta))
                .unwrap_or(Status::NotFound))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C<'_>, id: i32, v: i64| -> R {
            running(&c)?;
            st(metric(&mut c, id)
                .map(|m| m.record(v as u64))
                .unwrap_or(Status::NotFound))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, vp: i32| -> R {
            running(&c)?;
            let v = match metric(&mut c, id) {
                None => return st(Status::NotFound),
                Some(m) => try_st!(m.get()),
            };
            let (mem, _) = split(&mut c)?;
            st(super::mem::put_u64(mem, vp, v)
                .map(|_| Status::Ok)
                .unwrap_or_else(|s| s))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> R {
            running(&c)?;
            let state = c.data_mut();
            if state.contexts.contains_key(&(id as u32)) {
                state.effective = Some(id as u32);
                st(Status::Ok)
            } else {
                st(Status::BadArgument)
            }
        },
    )?;
    l.func_wrap("env", "proxy_done", |mut c: C<'_>| -> R {
        running(&c)?;
        let state = c.data_mut();
        let id = state.context_id();
        match state.pending_done.iter().position(|r| *r == id) {
            Some(i) => {
                state.pending_done.remove(i);
                st(Status::Ok)
            }
            None => st(Status::NotFound),
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, ap: i32, al: i32, rpp: i32, rlp: i32| {
            foreign(&mut c, [np, nl, ap, al], rpp, rlp)
        },
    )?;
    // Emscripten and AssemblyScript helpers that cpp-host also provides.
    l.func_wrap(
        "env",
        "emscripten_notify_memory_growth",
        |_c: C<'_>, _i: i32| {},
    )?;
    l.func_wrap("env", "pthread_equal", |_c: C<'_>, a: i32, b: i32| -> i32 {
        i32::from(a == b)
    })?;
    l.func_wrap(
        "env",
        "abort",
        |mut c: C<'_>, msg: i32, file: i32, line: i32, col: i32| -> wasmtime::Result<()> {
            let _ = (msg, file);
            let prefix = c.data().log_prefix();
            c.data_mut().host.log(
                &prefix,
                LogLevel::Critical,
                &format!("abort called at {line}:{col}"),
            );
            wasmtime::bail!("plugin called abort at {line}:{col}")
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn compress_matches_envoys_zlib_output() {
        // Envoy 1.40's `compress` of "hello world!" (seen through a Go SDK plugin).
        let want = "789ccb48cdc9c95728cf2fca495104001e89047e";
        let got = super::zlib(b"hello world!", true).expect("compress");
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
        assert_eq!(
            super::zlib(&got, false).as_deref(),
            Ok(&b"hello world!"[..])
        );
        assert!(super::zlib(b"not zlib", false).is_err());
    }

    /// Plugins see the wall clock in whole microseconds (Envoy's resolution: the Rust SDK's
    /// hello_world prints `19:55:58.218717` under Envoy), and it moves.
    #[test]
    fn the_wall_clock_has_envoys_microsecond_resolution() {
        let a = super::wall_clock_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::wall_clock_ns();
        assert_eq!((a % 1000, b % 1000), (0, 0));
        assert!(b > a && a > 1_700_000_000_000_000_000, "{a} {b}");
    }
}
