//! Bootstrap files: YAML or JSON → proto3 JSON mapping through Envoy's descriptors → the
//! envoy-types `Bootstrap`, exactly as Envoy's own loader reads them (unknown fields rejected).

use prost::Message;

use super::ConfigError;
use crate::pb::bootstrap::Bootstrap;

const BOOTSTRAP_TYPE: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// Reads and parses a bootstrap file (`.json` as JSON, anything else as YAML, which is a
/// superset of JSON anyway).
pub fn load_file(path: &std::path::Path) -> Result<Bootstrap, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses bootstrap YAML or JSON text.
pub fn parse(text: &str) -> Result<Bootstrap, ConfigError> {
    let value = parse_value(text)?;
    from_value(&value)
}

/// YAML/JSON text → JSON value.
pub fn parse_value(text: &str) -> Result<serde_json::Value, ConfigError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ConfigError::Parse(format!("JSON: {e}")))
    } else {
        serde_saphyr::from_str::<serde_json::Value>(text)
            .map_err(|e| ConfigError::Parse(format!("YAML: {e}")))
    }
}

/// JSON value → `Bootstrap` through the proto3 JSON mapping.
pub fn from_value(value: &serde_json::Value) -> Result<Bootstrap, ConfigError> {
    from_value_with(value, false)
}

/// [`from_value`], ignoring unknown fields when `allow_unknown` (Envoy's
/// `--allow-unknown-static-fields`).
pub fn from_value_with(
    value: &serde_json::Value,
    allow_unknown: bool,
) -> Result<Bootstrap, ConfigError> {
    let bytes = wasmesh_xds::descriptors::from_json_with(BOOTSTRAP_TYPE, value, allow_unknown)
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    Bootstrap::decode(bytes.as_slice()).map_err(|e| ConfigError::Parse(e.to_string()))
}

/// Envoy's `-c FILE` with `--config-yaml TEXT`: the file, then the text merged over it as
/// protobuf merges (scalars replaced, messages merged, lists appended); either may be absent.
pub fn load_merged(
    path: Option<&std::path::Path>,
    overlay: Option<&str>,
    allow_unknown: bool,
) -> Result<Bootstrap, ConfigError> {
    let mut bootstrap = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.display().to_string(),
                source,
            })?;
            from_value_with(&parse_value(&text)?, allow_unknown)?
        }
        None => Bootstrap::default(),
    };
    if let Some(text) = overlay {
        let over = parse_value(text)
            .and_then(|v| from_value_with(&v, allow_unknown))
            .map_err(|e| ConfigError::Parse(format!("--config-yaml: {e}")))?;
        bootstrap
            .merge(over.encode_to_vec().as_slice())
            .map_err(|e| ConfigError::Parse(format!("--config-yaml: {e}")))?;
    }
    Ok(bootstrap)
}

/// The bootstrap as proto3 JSON (for `/config_dump`).
pub fn to_json(bootstrap: &Bootstrap) -> serde_json::Value {
    wasmesh_xds::descriptors::to_json(BOOTSTRAP_TYPE, &bootstrap.encode_to_vec())
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--config-yaml` merges over the file as protobuf does; `--allow-unknown-static-fields`
    /// drops unknown fields instead of refusing them.
    #[test]
    fn config_yaml_merges_and_unknown_fields_can_be_allowed() {
        let dir = std::env::temp_dir().join(format!("wasmesh-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("b.yaml");
        std::fs::write(
            &file,
            "node: {id: a, cluster: c}\nadmin: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\nstatic_resources: {clusters: [{name: x}]}\n",
        )
        .unwrap();
        let b = load_merged(
            Some(&file),
            Some(r#"{"node": {"id": "b"}, "static_resources": {"clusters": [{"name": "y"}]}}"#),
            false,
        )
        .unwrap();
        let node = b.node.unwrap();
        assert_eq!((node.id.as_str(), node.cluster.as_str()), ("b", "c"));
        let names: Vec<_> = b
            .static_resources
            .unwrap()
            .clusters
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["x", "y"]);
        let unknown = "node: {id: a, not_a_field: 1}\n";
        let e = from_value_with(&parse_value(unknown).unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("not_a_field"), "{e}");
        let b = from_value_with(&parse_value(unknown).unwrap(), true).unwrap();
        assert_eq!(b.node.unwrap().id, "a");
        let e = load_merged(Some(&file), Some("node: {id: [}"), false).unwrap_err();
        assert!(e.to_string().contains("--config-yaml"), "{e}");
    }

    #[test]
    fn yaml_with_any_and_durations() {
        let b = parse(
            r#"
static_resources:
  clusters:
  - name: c
    connect_timeout: 0.25s
    type: STATIC
"#,
        )
        .unwrap();
        let c = &b.static_resources.unwrap().clusters[0];
        assert_eq!(c.connect_timeout.as_ref().unwrap().nanos, 250_000_000);
        let err = parse("static_resources: {listenerz: []}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listenerz"), "{err}");
    }
}
