//! ABI enumerations and ABI-version detection (spec `proxy_status_t`, map/buffer/stream types).

use crate::error::Error;

/// `proxy_status_t`: what every `proxy_*` import returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

/// The ABI version a module declares through its `proxy_abi_version_*` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    /// The marker export names, newest first.
    pub const MARKERS: [(&'static str, AbiVersion); 3] = [
        ("proxy_abi_version_0_2_1", AbiVersion::V0_2_1),
        ("proxy_abi_version_0_2_0", AbiVersion::V0_2_0),
        ("proxy_abi_version_0_1_0", AbiVersion::V0_1_0),
    ];

    /// Picks the ABI version from a module's export names, newest first (cpp-host does the same).
    pub fn detect<'a>(exports: impl IntoIterator<Item = &'a str> + Clone) -> Result<Self, Error> {
        for (marker, version) in Self::MARKERS {
            if exports.clone().into_iter().any(|e| e == marker) {
                return Ok(version);
            }
        }
        Err(Error::UnknownAbi)
    }

    /// Whether this is one of the 0.2.x versions.
    pub fn is_v02(self) -> bool {
        self != AbiVersion::V0_1_0
    }
}

impl std::fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AbiVersion::V0_1_0 => "0.1.0",
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        })
    }
}

/// `proxy_map_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    GrpcInitialMetadata = 4,
    GrpcTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

impl MapType {
    pub(crate) fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            4 => Self::GrpcInitialMetadata,
            5 => Self::GrpcTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }

    /// Index of the per-stream map slot (0..4), `None` for call/gRPC maps.
    pub(crate) fn stream_slot(self) -> Option<usize> {
        match self {
            Self::RequestHeaders => Some(0),
            Self::RequestTrailers => Some(1),
            Self::ResponseHeaders => Some(2),
            Self::ResponseTrailers => Some(3),
            _ => None,
        }
    }

    /// The map type of a stream slot.
    pub(crate) fn of_stream_slot(slot: usize) -> Self {
        match slot {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            _ => Self::ResponseTrailers,
        }
    }
}

/// `proxy_buffer_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    DownstreamData = 2,
    UpstreamData = 3,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
    CallData = 8,
}

impl BufferType {
    pub(crate) fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }

    /// Index of the per-stream mutable buffer slot (0..4), `None` for the others.
    pub(crate) fn stream_slot(self) -> Option<usize> {
        match self {
            Self::HttpRequestBody => Some(0),
            Self::HttpResponseBody => Some(1),
            Self::DownstreamData => Some(2),
            Self::UpstreamData => Some(3),
            _ => None,
        }
    }
}

/// `proxy_stream_type_t` (0.2.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    HttpRequest = 0,
    HttpResponse = 1,
    Downstream = 2,
    Upstream = 3,
}

/// `proxy_log_level_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricType {
    pub(crate) fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// Peer type reported to the connection-close callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerType {
    Unknown = 0,
    Local = 1,
    Remote = 2,
}

/// What a header callback asked for, mapped as cpp-host maps the guest's `i32` (ABI doc 1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersAction {
    /// Go on to the next filter.
    Continue,
    /// Stop everything (headers and body) until the plugin resumes the stream
    /// (StopAllIterationAndWatermark, the 0.2.x default for `Action::Pause`).
    StopAllWatermark,
    /// Stop headers, but keep buffering the body (StopAllIterationAndBuffer).
    StopAllBuffer,
}

impl HeadersAction {
    pub(crate) fn from_guest(v: i32) -> Self {
        match v {
            0 | 2 => Self::Continue,
            3 => Self::StopAllBuffer,
            _ => Self::StopAllWatermark,
        }
    }
}

/// What a body callback asked for (FilterDataStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAction {
    /// Forward what is in the buffer.
    Continue,
    /// Keep buffering; the next call reports the accumulated body.
    StopAndBuffer,
    /// Stop with back-pressure.
    StopWatermark,
    /// Stop without buffering.
    StopNoBuffer,
}

impl DataAction {
    pub(crate) fn from_guest(v: i32) -> Self {
        match v {
            0 => Self::Continue,
            1 => Self::StopAndBuffer,
            2 => Self::StopWatermark,
            _ => Self::StopNoBuffer,
        }
    }

    /// Whether the stream may go on.
    pub fn is_continue(self) -> bool {
        self == Self::Continue
    }
}

/// Trailers and L4 data: continue or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    Continue,
    Stop,
}

impl FilterAction {
    pub(crate) fn from_guest(v: i32) -> Self {
        if v == 0 { Self::Continue } else { Self::Stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_newest_marker_first() {
        let exports = [
            "proxy_abi_version_0_1_0",
            "proxy_abi_version_0_2_1",
            "malloc",
        ];
        assert_eq!(
            AbiVersion::detect(exports.iter().copied()).ok(),
            Some(AbiVersion::V0_2_1)
        );
        let old = ["proxy_abi_version_0_1_0"];
        assert_eq!(
            AbiVersion::detect(old.iter().copied()).ok(),
            Some(AbiVersion::V0_1_0)
        );
        let none = ["_start", "memory"];
        assert!(matches!(
            AbiVersion::detect(none.iter().copied()),
            Err(Error::UnknownAbi)
        ));
    }

    #[test]
    fn maps_actions_like_cpp_host() {
        assert_eq!(HeadersAction::from_guest(0), HeadersAction::Continue);
        assert_eq!(
            HeadersAction::from_guest(1),
            HeadersAction::StopAllWatermark
        );
        assert_eq!(HeadersAction::from_guest(2), HeadersAction::Continue);
        assert_eq!(HeadersAction::from_guest(3), HeadersAction::StopAllBuffer);
        assert_eq!(
            HeadersAction::from_guest(99),
            HeadersAction::StopAllWatermark
        );
        assert_eq!(DataAction::from_guest(1), DataAction::StopAndBuffer);
        assert_eq!(DataAction::from_guest(7), DataAction::StopNoBuffer);
        assert_eq!(FilterAction::from_guest(5), FilterAction::Stop);
    }
}
