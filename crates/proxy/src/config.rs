//! Proxy configuration: the Envoy v3 bootstrap (YAML/JSON) parsed through Envoy's descriptors,
//! checked against the subset we implement, and built by pure functions into immutable internal
//! types ([`ProxyConfig`]) that the workers read through an `ArcSwap`.

use std::fmt;

/// A configuration error: what is wrong and where (the field path in the bootstrap).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML/JSON does not parse, or does not map onto the Envoy protos (unknown field,
    /// wrong type).
    #[error("invalid bootstrap: {0}")]
    Parse(String),
    /// A field is set that wasmesh does not implement (never silently ignored).
    #[error("unsupported field {path}: {detail} (see the README for the supported subset)")]
    Unsupported {
        /// Field path, e.g. `static_resources.clusters[0].lb_policy`.
        path: String,
        /// What is unsupported.
        detail: String,
    },
    /// A field has a value that cannot work.
    #[error("invalid {path}: {reason}")]
    Invalid {
        /// Field path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A filter's `typed_config` type is not registered.
    #[error("{path}: unknown filter type {type_url:?}; supported: {known}")]
    UnknownFilter {
        /// Field path of the filter.
        path: String,
        /// Its `typed_config` type URL.
        type_url: String,
        /// The registered type URLs.
        known: String,
    },
    /// A filter builder rejected its config.
    #[error("{path}: filter {name:?}: {reason}")]
    Filter {
        /// Field path of the filter.
        path: String,
        /// Filter name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl ConfigError {
    /// An unsupported-field error.
    pub fn unsupported(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// An invalid-value error.
    pub fn invalid(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// A filter builder's error, for filters outside this module (e.g. the Wasm filter):
    /// `ConfigError::filter(ctx, "vm_config.code: file not found")`.
    pub fn filter(ctx: &crate::filter::BuildContext, reason: impl fmt::Display) -> Self {
        Self::Filter {
            path: ctx.field_path.clone(),
            name: ctx.filter_name.clone(),
            reason: reason.to_string(),
        }
    }
}
