//! Log lines in Envoy's format, for `wasmesh proxy`: Envoy's default pattern
//! `[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`, or the spdlog pattern given with `--log-format`.
//! Tools written for Envoy's log (log shippers, test scrapers, `grep '\]\[wasm\]'`) read ours.
//!
//! A plugin's line (`proxy_log`) carries Envoy's level names (`warning`, `critical`) and the
//! source location Envoy prints for it (`source/extensions/common/wasm/context.cc:1151` at
//! info), so a line from the same plugin reads the same in both proxies apart from the time and
//! the thread id.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Envoy's default `--log-format`.
pub(crate) const ENVOY_DEFAULT: &str = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v";

/// One piece of a parsed pattern.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Flag(char),
}

/// An spdlog pattern as Envoy takes it in `--log-format`.
#[derive(Debug, Clone)]
pub(crate) struct EnvoyFormat {
    pieces: Vec<Piece>,
}

impl EnvoyFormat {
    pub(crate) fn new(pattern: &str) -> Self {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => text.push('%'),
                Some(f) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Flag(f));
                }
                None => text.push('%'),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Self { pieces }
    }
}

/// The message and the other fields of an event.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
    critical: bool,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "critical" => self.critical = true,
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "critical" {
            self.critical = value;
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// Envoy's level names.
fn level_name(level: Level, critical: bool) -> &'static str {
    match level {
        _ if critical => "critical",
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// Envoy's logger (`%n`) for a tracing target.
fn logger_name(target: &str) -> &'static str {
    let module = target.split("::").nth(1).unwrap_or_default();
    match target.split("::").next().unwrap_or_default() {
        "wasm" | "wasm_host" | "wasmtime" | "cranelift_codegen" => "wasm",
        "wasmesh_xds" | "wasmesh_agent" => "config",
        "wasmesh_proxy" => match module {
            "admin" => "admin",
            "xds" | "config" => "config",
            "upstream" | "cluster" => "upstream",
            "hcm" | "filter" | "route" => "http",
            "wasm_filter" => "wasm",
            "rbac" => "rbac",
            "tcp" => "filter",
            "listener" | "server" => "conn_handler",
            _ => "main",
        },
        _ => "main",
    }
}

/// The line Envoy's `context.cc` logs a plugin's message from, per level (Envoy 1.40).
fn plugin_line(level: &str) -> u32 {
    match level {
        "trace" => 1145,
        "debug" => 1148,
        "info" => 1151,
        "warning" => 1154,
        "error" => 1157,
        _ => 1160,
    }
}

fn thread_id() -> i64 {
    thread_local! {
        #[allow(unsafe_code, reason = "gettid(2) takes no arguments")]
        // SAFETY: gettid only returns the calling thread's id.
        static TID: i64 = i64::from(unsafe { libc::gettid() });
    }
    TID.with(|t| *t)
}

/// Escapes as Envoy's `%j` does (JSON string contents).
fn json_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

impl EnvoyFormat {
    /// The line for one event (no trailing newline).
    fn line(
        &self,
        now: std::time::SystemTime,
        level: Level,
        target: &str,
        file: Option<&str>,
        line: Option<u32>,
        fields: &Fields,
    ) -> String {
        let t = wasmesh_proxy::access_log::CivilTime::utc(now);
        let lvl = level_name(level, fields.critical);
        let plugin = target == "wasm" && fields.message.starts_with("wasm log");
        let (file, line) = if plugin {
            ("source/extensions/common/wasm/context.cc", plugin_line(lvl))
        } else {
            (file.unwrap_or("?"), line.unwrap_or(0))
        };
        let mut out = String::with_capacity(96 + fields.message.len());
        for p in &self.pieces {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Flag(f) => {
                    let _ = match f {
                        'Y' => write!(out, "{:04}", t.year),
                        'm' => write!(out, "{:02}", t.month),
                        'd' => write!(out, "{:02}", t.day),
                        'H' => write!(out, "{:02}", t.hour),
                        'M' => write!(out, "{:02}", t.minute),
                        'S' => write!(out, "{:02}", t.second),
                        'T' | 'X' => write!(out, "{:02}:{:02}:{:02}", t.hour, t.minute, t.second),
                        'D' | 'x' => write!(out, "{:02}/{:02}/{:02}", t.month, t.day, t.year % 100),
                        'e' => write!(out, "{:03}", t.nanos / 1_000_000),
                        'f' => write!(out, "{:06}", t.nanos / 1_000),
                        'F' => write!(out, "{:09}", t.nanos),
                        'E' => write!(out, "{}", t.unix_secs),
                        'z' => write!(out, "+00:00"),
                        't' => write!(out, "{}", thread_id()),
                        'P' => write!(out, "{}", std::process::id()),
                        'l' => write!(out, "{lvl}"),
                        'L' => write!(out, "{}", lvl[..1].to_ascii_uppercase()),
                        'n' => write!(out, "{}", logger_name(target)),
                        'g' => write!(out, "{file}"),
                        's' => write!(out, "{}", file.rsplit('/').next().unwrap_or(file)),
                        '#' => write!(out, "{line}"),
                        '!' => write!(out, "{target}"),
                        'v' => write!(out, "{}{}", fields.message, fields.rest),
                        // Envoy's own flags: the message with newlines escaped, and as the
                        // contents of a JSON string.
                        '_' => write!(
                            out,
                            "{}{}",
                            fields.message.replace('\n', "\\n"),
                            fields.rest
                        ),
                        'j' => {
                            json_escape(&fields.message, &mut out);
                            json_escape(&fields.rest, &mut out);
                            Ok(())
                        }
                        // colour range markers: no colours
                        '^' | '$' => Ok(()),
                        other => write!(out, "%{other}"),
                    };
                }
            }
        }
        out
    }
}

impl<S, N> FormatEvent<S, N> for EnvoyFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // (a `log` crate record, as wasmtime's: its own target, file and line)
        let normalized = tracing_log::NormalizeEvent::normalized_metadata(event);
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let line = self.line(
            std::time::SystemTime::now(),
            *meta.level(),
            meta.target(),
            meta.file(),
            meta.line(),
            &fields,
        );
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + millis)
    }

    fn fields(message: &str, critical: bool) -> Fields {
        Fields {
            message: message.to_string(),
            rest: String::new(),
            critical,
        }
    }

    #[test]
    fn plugin_lines_read_as_envoys() {
        let f = EnvoyFormat::new(ENVOY_DEFAULT);
        // 2026-12-08 03:20:17.372 UTC
        let line = f.line(
            at(1_796_700_017, 372),
            Level::ERROR,
            "wasm",
            Some("crates/wasm-host/src/host.rs"),
            Some(60),
            &fields("wasm log p: boom", true),
        );
        let tid = thread_id();
        assert_eq!(
            line,
            format!(
                "[2026-12-08 03:20:17.372][{tid}][critical][wasm] \
                 [source/extensions/common/wasm/context.cc:1160] wasm log p: boom"
            )
        );
        let info = f.line(
            at(0, 5),
            Level::WARN,
            "wasm",
            None,
            None,
            &fields("wasm log: x", false),
        );
        assert!(
            info.starts_with("[1970-01-01 00:00:00.005][")
                && info.ends_with(
                    "][warning][wasm] [source/extensions/common/wasm/context.cc:1154] wasm log: x"
                ),
            "{info}"
        );
    }

    #[test]
    fn other_lines_name_our_source_and_envoys_logger() {
        let f = EnvoyFormat::new("%l|%n|%s:%#|%v|%j|%L|%%");
        let mut fl = fields("listening \"x\"", false);
        fl.rest = " addr=1".into();
        let line = f.line(
            at(0, 0),
            Level::INFO,
            "wasmesh_proxy::admin",
            Some("crates/proxy/src/admin.rs"),
            Some(12),
            &fl,
        );
        assert_eq!(
            line,
            "info|admin|admin.rs:12|listening \"x\" addr=1|listening \\\"x\\\" addr=1|I|%"
        );
    }
}
