//! Access logs to stdout, stderr or a file, in Envoy's default format or a substitution format
//! (`log_format`: `text_format_source`, `json_format`; the deprecated `format`/`json_format`).

pub mod format;

use std::io::Write;
use std::sync::{Arc, Mutex};

use prost::Message;

use crate::config::{ConfigError, check};
use crate::filter::StreamInfo;
use crate::pb::Any;

const FILE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// An access log: where lines go and how they look.
#[derive(Clone, Debug)]
pub struct AccessLog {
    /// The destination (a plugin: Envoy's Wasm access logger).
    pub sink: Sink,
    /// The line format.
    pub format: LogFormat,
}

/// How lines look.
#[derive(Clone, Debug)]
pub enum LogFormat {
    /// Envoy's default format.
    Default,
    /// A text format.
    Text(Vec<format::Part>),
    /// A JSON format (and `omit_empty_values`).
    Json(Vec<(String, format::JsonTemplate)>, bool),
}

/// Where log lines go.
#[derive(Clone)]
pub enum Sink {
    /// Process stdout.
    Stdout,
    /// Process stderr.
    Stderr,
    /// An append-only file.
    File(String, Arc<Mutex<std::fs::File>>),
    /// A plugin (`envoy.access_loggers.wasm`).
    Plugin(Arc<dyn PluginLog>),
}

/// An access logger that is a plugin: told about each finished stream on the worker it ran on.
pub trait PluginLog: Send + Sync {
    /// Starts the plugin's VM on `worker` (with the config, as Envoy does).
    fn warm(&self, worker: &crate::filter::WorkerContext);
    /// The stream finished.
    fn log(&self, info: &StreamInfo, worker: &crate::filter::WorkerContext);
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Stdout => f.write_str("Stdout"),
            Sink::Stderr => f.write_str("Stderr"),
            Sink::File(p, _) => write!(f, "File({p})"),
            Sink::Plugin(_) => f.write_str("Plugin"),
        }
    }
}

fn substitution(
    sfs: &envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString,
    path: &str,
) -> Result<LogFormat, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as F;
    #[allow(deprecated, reason = "text_format is still common")]
    match &sfs.format {
        Some(F::TextFormat(t)) => Ok(LogFormat::Text(format::parse(
            t,
            &format!("{path}.text_format"),
        )?)),
        Some(F::TextFormatSource(ds)) => {
            let p = format!("{path}.text_format_source");
            Ok(LogFormat::Text(format::parse(
                &crate::config::data_source(ds, &p)?,
                &p,
            )?))
        }
        Some(F::JsonFormat(st)) => Ok(LogFormat::Json(
            json_format(st, &format!("{path}.json_format"))?,
            sfs.omit_empty_values,
        )),
        None => Ok(LogFormat::Default),
    }
}

fn json_format(
    st: &envoy_types::pb::google::protobuf::Struct,
    path: &str,
) -> Result<Vec<(String, format::JsonTemplate)>, ConfigError> {
    format::json_template(st, path)
}

impl AccessLog {
    /// Builds a logger from its `typed_config` at `path`.
    pub fn build(any: &Any, path: &str) -> Result<Self, ConfigError> {
        use envoy_types::pb::envoy::extensions::access_loggers::{
            file::v3 as file, stream::v3 as stream,
        };
        check::check_any(any, path)?;
        let decode_err = |e: prost::DecodeError| ConfigError::invalid(path, e);
        match any.type_url.as_str() {
            STDOUT => {
                let c =
                    stream::StdoutAccessLog::decode(any.value.as_slice()).map_err(decode_err)?;
                let format = match &c.access_log_format {
                    Some(stream::stdout_access_log::AccessLogFormat::LogFormat(f)) => {
                        substitution(f, &format!("{path}.log_format"))?
                    }
                    None => LogFormat::Default,
                };
                Ok(AccessLog {
                    sink: Sink::Stdout,
                    format,
                })
            }
            STDERR => {
                let c =
                    stream::StderrAccessLog::decode(any.value.as_slice()).map_err(decode_err)?;
                let format = match &c.access_log_format {
                    Some(stream::stderr_access_log::AccessLogFormat::LogFormat(f)) => {
                        substitution(f, &format!("{path}.log_format"))?
                    }
                    None => LogFormat::Default,
                };
                Ok(AccessLog {
                    sink: Sink::Stderr,
                    format,
                })
            }
            FILE => {
                let cfg = file::FileAccessLog::decode(any.value.as_slice()).map_err(decode_err)?;
                use file::file_access_log::AccessLogFormat as F;
                #[allow(deprecated, reason = "format and json_format are still common")]
                let format = match &cfg.access_log_format {
                    None => LogFormat::Default,
                    Some(F::Format(t)) => {
                        LogFormat::Text(format::parse(t, &format!("{path}.format"))?)
                    }
                    Some(F::JsonFormat(st)) => {
                        LogFormat::Json(json_format(st, &format!("{path}.json_format"))?, false)
                    }
                    Some(F::LogFormat(f)) => substitution(f, &format!("{path}.log_format"))?,
                    Some(_) => return Err(ConfigError::unsupported(path, "typed_json_format")),
                };
                let sink = match cfg.path.as_str() {
                    "/dev/stdout" => Sink::Stdout,
                    "/dev/stderr" => Sink::Stderr,
                    p => {
                        let file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(p)
                            .map_err(|e| {
                                ConfigError::invalid(format!("{path}.path"), format!("{p}: {e}"))
                            })?;
                        Sink::File(p.to_string(), Arc::new(Mutex::new(file)))
                    }
                };
                Ok(AccessLog { sink, format })
            }
            other => Err(ConfigError::unsupported(
                path,
                format!("access logger {other:?} (file, stdout, stderr are)"),
            )),
        }
    }

    /// Whether lines need the full request and response headers.
    pub fn needs_headers(&self) -> bool {
        matches!(self.sink, Sink::Plugin(_)) || !matches!(self.format, LogFormat::Default)
    }

    /// Formats and writes the line for a finished stream.
    pub fn log(&self, cx: &format::LogContext<'_>, summary: &RequestSummary) {
        let line = match &self.format {
            LogFormat::Default => default_format(cx.info, summary),
            LogFormat::Text(parts) => format::render_text(parts, cx),
            LogFormat::Json(entries, omit) => format::render_json(entries, *omit, cx),
        };
        self.write(&line);
    }

    /// Writes one line.
    pub fn write(&self, line: &str) {
        let r = match &self.sink {
            Sink::Plugin(_) => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            Sink::File(_, f) => match f.lock() {
                Ok(mut f) => f.write_all(line.as_bytes()),
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "access log write failed");
        }
    }
}

fn or_dash(v: Option<&str>) -> &str {
    match v {
        Some(s) if !s.is_empty() => s,
        _ => "-",
    }
}

/// A UTC time split into its calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub nanos: u32,
    pub unix_secs: u64,
}

impl CivilTime {
    pub fn utc(t: std::time::SystemTime) -> Self {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86400, secs % 86400);
        // Civil from days (Howard Hinnant's algorithm).
        let z = i64::try_from(days).unwrap_or(0) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Self {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: (rem % 3600) / 60,
            second: rem % 60,
            nanos: d.subsec_nanos(),
            unix_secs: secs,
        }
    }
}

/// Envoy's `%START_TIME%`: `2026-11-25T17:40:01.123Z`.
pub fn format_start_time(t: std::time::SystemTime) -> String {
    let c = CivilTime::utc(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanos / 1_000_000
    )
}

/// One line in Envoy's default format:
/// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
/// %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
/// "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`
pub fn default_format(info: &StreamInfo, req: &RequestSummary) -> String {
    let protocol = protocol(info.protocol);
    let upstream_time = info
        .upstream_service_time
        .map(|d| d.as_millis().to_string());
    let upstream_host = info.upstream_host.map(|a| a.to_string());
    format!(
        "[{}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\"\n",
        format_start_time(info.start_time),
        or_dash(req.method.as_deref()),
        or_dash(req.original_path.as_deref().or(req.path.as_deref())),
        protocol,
        info.response_code.unwrap_or(0),
        info.response_flags,
        info.bytes_received,
        info.bytes_sent,
        info.duration.map_or(0, |d| d.as_millis()),
        or_dash(upstream_time.as_deref()),
        or_dash(req.forwarded_for.as_deref()),
        or_dash(req.user_agent.as_deref()),
        or_dash(info.request_id.as_deref()),
        or_dash(req.authority.as_deref()),
        or_dash(upstream_host.as_deref()),
    )
}

/// Envoy's `%PROTOCOL%`.
pub fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// The request headers the default format prints, captured before the request goes upstream.
#[derive(Debug, Clone, Default)]
pub struct RequestSummary {
    /// `:method`.
    pub method: Option<String>,
    /// `:path`.
    pub path: Option<String>,
    /// `x-envoy-original-path`.
    pub original_path: Option<String>,
    /// `x-forwarded-for`.
    pub forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `:authority`.
    pub authority: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_iso8601_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_092_401_123);
        assert_eq!(format_start_time(t), "2025-11-25T17:40:01.123Z");
    }
}
