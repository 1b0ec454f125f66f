//! The bootstrap's `stats_config.stats_tags`: tags Envoy cuts out of stat names for
//! `/stats/prometheus` (`/stats` keeps the full names). A regex's first capture group is the
//! part removed from the name, its second (or else its first) the tag's value; a
//! `fixed_value` tag is added to every stat.

use std::sync::{Arc, RwLock};

use regex::Regex;

use crate::config::ConfigError;

/// One `TagSpecifier`.
#[derive(Debug, Clone)]
pub struct TagSpec {
    name: String,
    how: How,
}

#[derive(Debug, Clone)]
enum How {
    Regex(Regex),
    Fixed(String),
}

/// The tag specifiers in force, shared by the store and the plugin-metric renderer.
#[derive(Debug, Clone, Default)]
pub struct TagSpecs(Arc<RwLock<Vec<TagSpec>>>);

impl TagSpecs {
    /// Replaces the specifiers (a new bootstrap).
    pub fn set(&self, specs: Vec<TagSpec>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = specs;
    }

    /// `name` with every regex tag's part removed, and the tags: the fixed ones, then those
    /// found, in specifier order (Envoy's order).
    pub fn extract(&self, name: &str) -> (String, Vec<(String, String)>) {
        let specs = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut name = name.to_string();
        let mut tags: Vec<(String, String)> = specs
            .iter()
            .filter_map(|s| match &s.how {
                How::Fixed(v) => Some((s.name.clone(), v.clone())),
                How::Regex(_) => None,
            })
            .collect();
        for spec in specs.iter() {
            match &spec.how {
                How::Fixed(_) => {}
                How::Regex(re) => {
                    let Some(caps) = re.captures(&name) else {
                        continue;
                    };
                    let Some(remove) = caps.get(1) else { continue };
                    let value = caps.get(2).unwrap_or(remove).as_str().to_string();
                    let range = remove.range();
                    tags.push((spec.name.clone(), value));
                    name.replace_range(range, "");
                }
            }
        }
        (name, tags)
    }

    /// Whether no specifier is set.
    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// Builds the specifiers of `stats_config.stats_tags`; an invalid regex, a regex without a
/// capture group or a specifier with neither is an error naming it.
pub fn build(
    specs: &[envoy_types::pb::envoy::config::metrics::v3::TagSpecifier],
) -> Result<Vec<TagSpec>, ConfigError> {
    use envoy_types::pb::envoy::config::metrics::v3::tag_specifier::TagValue;
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let path = format!("stats_config.stats_tags[{i}]");
            if s.tag_name.is_empty() {
                return Err(ConfigError::invalid(format!("{path}.tag_name"), "required"));
            }
            let how = match &s.tag_value {
                Some(TagValue::FixedValue(v)) => How::Fixed(v.clone()),
                Some(TagValue::Regex(r)) if !r.is_empty() => {
                    let re = Regex::new(r)
                        .map_err(|e| ConfigError::invalid(format!("{path}.regex"), e))?;
                    if re.captures_len() < 2 {
                        return Err(ConfigError::invalid(
                            format!("{path}.regex"),
                            "needs a capture group (the part of the name to remove)",
                        ));
                    }
                    How::Regex(re)
                }
                _ => {
                    return Err(ConfigError::unsupported(
                        path,
                        "a tag specifier with neither regex nor fixed_value (Envoy's default \
                         regex for a built-in tag name)",
                    ));
                }
            };
            Ok(TagSpec {
                name: s.tag_name.clone(),
                how,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::metrics::v3::TagSpecifier;
    use envoy_types::pb::envoy::config::metrics::v3::tag_specifier::TagValue;

    fn spec(name: &str, v: TagValue) -> TagSpecifier {
        TagSpecifier {
            tag_name: name.into(),
            tag_value: Some(v),
        }
    }

    /// The proxy-wasm Go SDK's metrics example: the name loses both tagged parts.
    #[test]
    fn regex_tags_cut_their_part_out_and_fixed_tags_add() {
        let specs = TagSpecs::default();
        specs.set(
            build(&[
                spec("value", TagValue::Regex("(_value=([a-zA-Z]+))".into())),
                spec("mesh", TagValue::FixedValue("m1".into())),
                spec(
                    "reporter",
                    TagValue::Regex("(_reporter=([a-zA-Z]+))".into()),
                ),
                spec("whole", TagValue::Regex("(zzz)".into())),
            ])
            .unwrap(),
        );
        let (name, tags) = specs.extract("wasmcustom.counts_value=foo_reporter=wasmgosdk");
        assert_eq!(name, "wasmcustom.counts");
        assert_eq!(
            tags,
            [("mesh", "m1"), ("value", "foo"), ("reporter", "wasmgosdk")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let (name, tags) = specs.extract("a.zzz.b");
        assert_eq!(name, "a..b");
        assert_eq!(tags[1], ("whole".to_string(), "zzz".to_string()));
    }

    #[test]
    fn bad_specifiers_name_their_field() {
        let e = build(&[spec("t", TagValue::Regex("(".into()))]).unwrap_err();
        assert!(e.to_string().contains("stats_tags[0].regex"), "{e}");
        let e = build(&[spec("t", TagValue::Regex("abc".into()))]).unwrap_err();
        assert!(e.to_string().contains("capture group"), "{e}");
        let e = build(&[spec("", TagValue::FixedValue("x".into()))]).unwrap_err();
        assert!(e.to_string().contains("tag_name"), "{e}");
    }
}
