//! Runs a plugin against one sample request with no proxy and reports what it did: header and
//! body edits, local reply, callouts, logs, metrics. Backs `wasmesh plugin test`.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use crate::abi::{BufferType, DataAction, HeadersAction, LogLevel, MapType, Status};
use crate::error::Error;
use crate::headers::HeaderMap;
use crate::host::{Host, HttpCall, HttpCallResponse};
use crate::metrics::MetricValue;
use crate::plugin::Plugin;
use crate::properties::NoProperties;
use crate::state::{Effect, LocalReply};

/// The sample exchange.
#[derive(Debug, Clone, Default)]
pub struct TrialInput {
    /// Request headers, pseudo-headers included (`:method`, `:path`, `:authority`, `:scheme`).
    pub request_headers: HeaderMap,
    pub request_body: Option<Vec<u8>>,
    /// Response headers the "upstream" sends (`:status` included).
    pub response_headers: HeaderMap,
    pub response_body: Option<Vec<u8>>,
    /// The answer given to every HTTP callout; `None` makes callouts fail.
    pub callout_response: Option<HttpCallResponse>,
}

/// What happened to one direction.
#[derive(Debug, Clone, Default)]
pub struct PhaseReport {
    pub headers_before: HeaderMap,
    pub headers_after: HeaderMap,
    pub body_before: Option<Vec<u8>>,
    pub body_after: Option<Vec<u8>>,
    /// Actions the plugin returned, in order (`headers: Continue`, `body: StopAndBuffer`...).
    pub actions: Vec<String>,
}

/// Everything the plugin did.
#[derive(Debug, Clone, Default)]
pub struct TrialReport {
    pub request: PhaseReport,
    /// `None` when the request never reached the upstream (local reply or failure).
    pub response: Option<PhaseReport>,
    pub local_reply: Option<LocalReply>,
    pub callouts: Vec<HttpCall>,
    pub logs: Vec<(LogLevel, String)>,
    pub metrics: Vec<(String, MetricValue)>,
    /// A trap or rejection, if the plugin failed.
    pub failure: Option<String>,
}

#[derive(Clone, Default)]
struct Recorder {
    logs: Rc<RefCell<Vec<(LogLevel, String)>>>,
    calls: Rc<RefCell<Vec<HttpCall>>>,
}

impl Host for Recorder {
    fn log(&mut self, _plugin: &str, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn log_level(&self) -> LogLevel {
        LogLevel::Trace
    }

    fn dispatch_http_call(&mut self, call: HttpCall) -> Result<(), Status> {
        self.calls.borrow_mut().push(call);
        Ok(())
    }
}

fn local_reply(effects: &[Effect]) -> Option<LocalReply> {
    effects.iter().find_map(|e| match e {
        Effect::LocalReply { reply, .. } => Some(reply.clone()),
        _ => None,
    })
}

/// Runs `plugin` on `input`: request headers, body, then (unless stopped) response headers and
/// body, answering callouts with `input.callout_response`; finally log, done, delete.
pub fn run(plugin: &Arc<Plugin>, input: &TrialInput) -> TrialReport {
    let rec = Recorder::default();
    let mut report = TrialReport::default();
    let result = drive(plugin, input, &rec, &mut report);
    if let Err(e) = result {
        report.failure = Some(e.to_string());
    }
    report.logs = rec.logs.borrow().clone();
    report.callouts = rec.calls.borrow().clone();
    report.metrics = plugin.metrics().snapshot();
    report
}

fn drive(
    plugin: &Arc<Plugin>,
    input: &TrialInput,
    rec: &Recorder,
    report: &mut TrialReport,
) -> Result<(), Error> {
    let mut vm = plugin.instantiate(Box::new(rec.clone()))?;
    let ctx = vm.new_http_context(Box::new(NoProperties))?;
    report.request.headers_before = input.request_headers.clone();
    report.request.body_before = input.request_body.clone();
    vm.set_map(ctx, MapType::RequestHeaders, input.request_headers.clone())?;
    let action = vm.on_request_headers(ctx, input.request_body.is_none())?;
    report.request.actions.push(format!("headers: {action:?}"));
    // Answer callouts made while the request was paused.
    let mut answered = 0;
    while answered < rec.calls.borrow().len() {
        let token = rec.calls.borrow()[answered].token;
        answered += 1;
        vm.on_http_call_response(token, input.callout_response.clone())?;
    }
    let effects = vm.take_effects();
    let resumed = effects.iter().any(|e| matches!(e, Effect::Continue { .. }));
    if let Some(reply) = local_reply(&effects) {
        report.local_reply = Some(reply);
    }
    let stopped = report.local_reply.is_some() || (action != HeadersAction::Continue && !resumed);
    if let Some(body) = &input.request_body
        && !stopped
    {
        vm.set_buffer(ctx, BufferType::HttpRequestBody, body.clone())?;
        let a = vm.on_request_body(ctx, true)?;
        report.request.actions.push(format!("body: {a:?}"));
        if a == DataAction::Continue {
            report.request.body_after = vm.take_buffer(ctx, BufferType::HttpRequestBody);
        }
        if let Some(reply) = local_reply(&vm.take_effects()) {
            report.local_reply = Some(reply);
        }
    }
    report.request.headers_after = vm
        .take_map(ctx, MapType::RequestHeaders)
        .unwrap_or_default();
    if !stopped && report.local_reply.is_none() {
        let mut resp = PhaseReport {
            headers_before: input.response_headers.clone(),
            body_before: input.response_body.clone(),
            ..Default::default()
        };
        vm.set_map(
            ctx,
            MapType::ResponseHeaders,
            input.response_headers.clone(),
        )?;
        let a = vm.on_response_headers(ctx, input.response_body.is_none())?;
        resp.actions.push(format!("headers: {a:?}"));
        if let Some(body) = &input.response_body {
            vm.set_buffer(ctx, BufferType::HttpResponseBody, body.clone())?;
            let a = vm.on_response_body(ctx, true)?;
            resp.actions.push(format!("body: {a:?}"));
            resp.body_after = vm.take_buffer(ctx, BufferType::HttpResponseBody);
        }
        if let Some(reply) = local_reply(&vm.take_effects()) {
            report.local_reply = Some(reply);
        }
        resp.headers_after = vm
            .take_map(ctx, MapType::ResponseHeaders)
            .unwrap_or_default();
        report.response = Some(resp);
    }
    vm.complete(ctx)
}

fn show_map(f: &mut fmt::Formatter<'_>, before: &HeaderMap, after: &HeaderMap) -> fmt::Result {
    for (k, v) in after.iter() {
        let was = before.iter().any(|(bk, bv)| bk == k && bv == v);
        let mark = if was { " " } else { "+" };
        writeln!(
            f,
            "  {mark} {}: {}",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(v)
        )?;
    }
    for (k, v) in before.iter() {
        if !after.iter().any(|(ak, av)| ak == k && av == v) {
            writeln!(
                f,
                "  - {}: {}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )?;
        }
    }
    Ok(())
}

fn show_phase(f: &mut fmt::Formatter<'_>, name: &str, p: &PhaseReport) -> fmt::Result {
    writeln!(f, "{name} ({}):", p.actions.join(", "))?;
    show_map(f, &p.headers_before, &p.headers_after)?;
    if let (Some(b), Some(a)) = (&p.body_before, &p.body_after)
        && a != b
    {
        writeln!(
            f,
            "  body: {:?} -> {:?}",
            String::from_utf8_lossy(b),
            String::from_utf8_lossy(a)
        )?;
    }
    Ok(())
}

impl fmt::Display for TrialReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show_phase(f, "request headers", &self.request)?;
        for c in &self.callouts {
            writeln!(
                f,
                "callout to cluster {:?} (timeout {:?}): {} {}",
                c.upstream,
                c.timeout,
                c.headers.get_str(":method").unwrap_or(""),
                c.headers.get_str(":path").unwrap_or("")
            )?;
        }
        if let Some(r) = &self.local_reply {
            writeln!(f, "local reply: {} (details {:?})", r.status, r.details)?;
            for (k, v) in &r.headers {
                writeln!(
                    f,
                    "  {}: {}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )?;
            }
            if !r.body.is_empty() {
                writeln!(f, "  body: {:?}", String::from_utf8_lossy(&r.body))?;
            }
        }
        if let Some(resp) = &self.response {
            show_phase(f, "response headers", resp)?;
        }
        if let Some(e) = &self.failure {
            writeln!(f, "plugin failed: {e}")?;
        }
        if !self.logs.is_empty() {
            writeln!(f, "logs:")?;
            for (l, m) in &self.logs {
                writeln!(f, "  [{l:?}] {m}")?;
            }
        }
        if !self.metrics.is_empty() {
            writeln!(f, "metrics:")?;
            for (n, v) in &self.metrics {
                let v = match v {
                    MetricValue::Counter(c) => format!("counter {c}"),
                    MetricValue::Gauge(g) => format!("gauge {g}"),
                    MetricValue::Histogram { count, sum, .. } => {
                        format!("histogram count={count} sum={sum}")
                    }
                };
                writeln!(f, "  {n}: {v}")?;
            }
        }
        Ok(())
    }
}
