//! Property values and their Envoy encoding (ABI doc 5.1), node info, stream property sources.

use crate::pairs;

/// A property value, encoded for the guest as Envoy's `serializeValue` does.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    /// String or bytes: raw bytes, no NUL.
    Bytes(Vec<u8>),
    /// int64, 8 bytes little endian.
    Int(i64),
    /// uint64, 8 bytes little endian.
    UInt(u64),
    /// double, 8 bytes IEEE-754 little endian.
    Double(f64),
    /// bool, one byte.
    Bool(bool),
    /// Timestamp: int64 nanoseconds since the Unix epoch.
    Timestamp(i64),
    /// Duration: int64 nanoseconds.
    Duration(i64),
    /// A map, encoded as pairs with each key and value encoded recursively.
    Map(Vec<(Vec<u8>, PropertyValue)>),
    /// A list, encoded as pairs with the elements as keys and empty values.
    List(Vec<PropertyValue>),
    /// Already-serialized bytes (e.g. a protobuf message).
    Raw(Vec<u8>),
    /// A value the host has but cannot serialize: the call answers SerializationFailure
    /// (Envoy does for `xds.upstream_host_metadata` of a host without metadata).
    Unserializable,
}

impl PropertyValue {
    /// A string value.
    pub fn string(s: impl Into<String>) -> Self {
        PropertyValue::Bytes(s.into().into_bytes())
    }

    /// The bytes handed to the guest.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropertyValue::Bytes(b) | PropertyValue::Raw(b) => b.clone(),
            PropertyValue::Unserializable => Vec::new(),
            PropertyValue::Int(v) | PropertyValue::Timestamp(v) | PropertyValue::Duration(v) => {
                v.to_le_bytes().to_vec()
            }
            PropertyValue::UInt(v) => v.to_le_bytes().to_vec(),
            PropertyValue::Double(v) => v.to_le_bytes().to_vec(),
            PropertyValue::Bool(b) => vec![u8::from(*b)],
            PropertyValue::Map(entries) => {
                let enc: Vec<(Vec<u8>, Vec<u8>)> = entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.encode()))
                    .collect();
                pairs::encode(enc.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            }
            PropertyValue::List(items) => {
                let enc: Vec<Vec<u8>> = items.iter().map(PropertyValue::encode).collect();
                pairs::encode(enc.iter().map(|k| (k.as_slice(), &b""[..])))
            }
        }
    }

    /// Follows the remaining path segments into maps and lists.
    pub fn lookup(&self, path: &[&[u8]]) -> Option<PropertyValue> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self.clone());
        };
        match self {
            PropertyValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_slice() == *first)
                .and_then(|(_, v)| v.lookup(rest)),
            PropertyValue::List(items) => std::str::from_utf8(first)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .and_then(|i| items.get(i))
                .and_then(|v| v.lookup(rest)),
            _ => None,
        }
    }
}

/// The proxy's node, as `xds.node` (and legacy `node`) present it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// `xds.node.id`
    pub id: String,
    /// `xds.node.cluster`
    pub cluster: String,
    /// `xds.node.metadata`: a Struct, as a map of values.
    pub metadata: Vec<(String, PropertyValue)>,
    /// The node serialized as an `envoy.config.core.v3.Node` protobuf (what `xds.node` returns).
    pub proto: Vec<u8>,
}

impl NodeInfo {
    pub(crate) fn lookup(&self, path: &[&[u8]]) -> Option<PropertyValue> {
        let Some((first, rest)) = path.split_first() else {
            return Some(PropertyValue::Raw(self.proto.clone()));
        };
        match *first {
            b"id" if rest.is_empty() => Some(PropertyValue::string(self.id.clone())),
            b"cluster" if rest.is_empty() => Some(PropertyValue::string(self.cluster.clone())),
            b"metadata" => PropertyValue::Map(
                self.metadata
                    .iter()
                    .map(|(k, v)| (k.clone().into_bytes(), v.clone()))
                    .collect(),
            )
            .lookup(rest),
            _ => None,
        }
    }
}

/// Properties of one stream that only the proxy knows (addresses, route, cluster, sizes...).
/// The host answers header-derived (`request.path`...), `plugin_*` and `xds.node` paths itself
/// and asks this for the rest.
pub trait StreamProperties {
    /// The value at `path` (segments already split on NUL), or `None` if absent.
    fn get(&self, path: &[&[u8]]) -> Option<PropertyValue>;

    /// A header map the proxy asked the VM to build only if the plugin reads it
    /// ([`crate::PluginVm::set_map_lazy`]: the final headers for `on_log`, which most plugins
    /// never look at).
    fn headers(&self, _map: crate::MapType) -> Option<crate::HeaderMap> {
        None
    }

    /// The stream's filter state object `key` (Envoy's `FilterState`: what any plugin of the
    /// stream stored with `proxy_set_property`, under `wasm.<path>`).
    fn filter_state(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// Stores filter state `key` for the whole stream; `false` when the stream has no shared
    /// filter state (the context then keeps the value to itself).
    fn set_filter_state(&self, _key: Vec<u8>, _value: Vec<u8>) -> bool {
        false
    }
}

/// A stream with no proxy-provided properties (tests, root contexts).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProperties;

impl StreamProperties for NoProperties {
    fn get(&self, _path: &[&[u8]]) -> Option<PropertyValue> {
        None
    }
}

/// Splits a guest property path on NUL. A trailing NUL (empty last segment) ends the path.
pub(crate) fn split_path(path: &[u8]) -> Vec<&[u8]> {
    let mut segs: Vec<&[u8]> = path.split(|b| *b == 0).collect();
    while segs.last().is_some_and(|s| s.is_empty()) {
        segs.pop();
    }
    segs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_envoy() {
        assert_eq!(
            PropertyValue::Int(8080).encode(),
            8080i64.to_le_bytes().to_vec()
        );
        assert_eq!(PropertyValue::Bool(true).encode(), vec![1]);
        assert_eq!(PropertyValue::string("GET").encode(), b"GET".to_vec());
        let m = PropertyValue::Map(vec![(b"k".to_vec(), PropertyValue::string("v"))]);
        assert_eq!(m.encode(), pairs::encode([(&b"k"[..], &b"v"[..])]));
    }

    #[test]
    fn node_paths() {
        let node = NodeInfo {
            id: "sidecar~10.0.0.1~app.ns~ns.svc.cluster.local".into(),
            cluster: "app".into(),
            metadata: vec![("NAMESPACE".into(), PropertyValue::string("ns"))],
            proto: vec![10, 1, b'x'],
        };
        assert_eq!(
            node.lookup(&[b"metadata", b"NAMESPACE"]),
            Some(PropertyValue::string("ns"))
        );
        assert_eq!(
            node.lookup(&[b"id"]).map(|v| v.encode()),
            Some(node.id.clone().into_bytes())
        );
        assert_eq!(
            node.lookup(&[]),
            Some(PropertyValue::Raw(vec![10, 1, b'x']))
        );
        assert_eq!(node.lookup(&[b"metadata", b"MISSING"]), None);
    }

    #[test]
    fn splits_paths() {
        assert_eq!(split_path(b"request\0path"), vec![&b"request"[..], b"path"]);
        assert_eq!(
            split_path(b"request\0path\0"),
            vec![&b"request"[..], b"path"]
        );
        assert_eq!(split_path(b"request.path"), vec![&b"request.path"[..]]);
    }
}
