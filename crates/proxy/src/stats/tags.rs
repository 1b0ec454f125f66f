//! The bootstrap's `stats_config.stats_tags`: tags Envoy cuts out of stat names for
//! `/stats/prometheus` (`/stats` keeps the full names). A regex's first capture group is the
//! part removed from the name, its second (or else its first) the tag's value; a
//! `fixed_value` tag is added to every stat.
//!
//! Envoy compiles these with `std::regex` (ECMAScript), and Istio's bootstrap relies on its
//! lookahead (`^listener(?=\.).*?\.http\.`), so they are compiled with `fancy-regex`.

use std::sync::{Arc, RwLock};

use fancy_regex::Regex;

use crate::config::ConfigError;

/// One `TagSpecifier`.
#[derive(Debug, Clone)]
pub struct TagSpec {
    name: String,
    how: How,
    /// The regex's literal first token (`^cluster\.` → `cluster`): Envoy applies such a
    /// specifier only to names starting with that token, after all those without one.
    prefix: Option<String>,
}

#[derive(Debug, Clone)]
enum How {
    Regex(Regex),
    Fixed(String),
}

/// The tag specifiers in force, shared by the store and the plugin-metric renderer.
#[derive(Debug, Clone, Default)]
pub struct TagSpecs(Arc<RwLock<Specs>>);

#[derive(Debug)]
struct Specs {
    specs: Vec<TagSpec>,
    /// `use_all_default_tags` (true unless the bootstrap says false).
    defaults: bool,
}

impl Default for Specs {
    fn default() -> Self {
        Self {
            specs: Vec::new(),
            defaults: true,
        }
    }
}

impl TagSpecs {
    /// Replaces the specifiers and `use_all_default_tags` (a new bootstrap).
    pub fn set(&self, specs: Vec<TagSpec>, defaults: bool) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Specs { specs, defaults };
    }

    /// Whether Envoy's built-in tags (`envoy_cluster_name`, ...) are extracted
    /// (`stats_config.use_all_default_tags`, true by default).
    pub fn use_default_tags(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).defaults
    }

    /// `name` with every regex tag's part removed, and the tags: the fixed ones, then those
    /// found, in specifier order (Envoy's order).
    pub fn extract(&self, name: &str) -> (String, Vec<(String, String)>) {
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        let specs = &guard.specs;
        let mut tags: Vec<(String, String)> = specs
            .iter()
            .filter_map(|s| match &s.how {
                How::Fixed(v) => Some((s.name.clone(), v.clone())),
                How::Regex(_) => None,
            })
            .collect();
        // Envoy's `TagProducerImpl`: every regex is matched against the whole name, specifiers
        // without a prefix first, then those whose prefix is the name's first token; the name
        // loses the union of the removed parts.
        let first_token = name.split('.').next().filter(|_| name.contains('.'));
        let unprefixed = specs.iter().filter(|s| s.prefix.is_none());
        let prefixed = specs
            .iter()
            .filter(|s| s.prefix.is_some() && s.prefix.as_deref() == first_token);
        let mut removed: Vec<std::ops::Range<usize>> = Vec::new();
        for spec in unprefixed.chain(prefixed) {
            let How::Regex(re) = &spec.how else { continue };
            // A match that exceeds the backtracking limit counts as no match.
            let Ok(Some(caps)) = re.captures(name) else {
                continue;
            };
            let Some(remove) = caps.get(1) else { continue };
            // With a second group in the regex, the value is what it matched (empty if it did
            // not take part), as with `std::smatch`.
            let value = if re.captures_len() > 2 {
                caps.get(2).map_or("", |m| m.as_str())
            } else {
                remove.as_str()
            };
            tags.push((spec.name.clone(), value.to_string()));
            removed.push(remove.range());
        }
        let cut: String = name
            .char_indices()
            .filter(|(i, _)| !removed.iter().any(|r| r.contains(i)))
            .map(|(_, c)| c)
            .collect();
        (cut, tags)
    }

    /// Whether no specifier is set.
    pub fn is_empty(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .specs
            .is_empty()
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
            let prefix = match &s.tag_value {
                Some(TagValue::Regex(r)) => regex_prefix(r),
                _ => None,
            };
            Ok(TagSpec {
                name: s.tag_name.clone(),
                how,
                prefix,
            })
        })
        .collect()
}

/// Envoy's `extractRegexPrefix`: `^` then letters, digits or `_`, then `\.` or `(?=\.)` (or `$`
/// at the end): those letters.
fn regex_prefix(regex: &str) -> Option<String> {
    let rest = regex.strip_prefix('^')?;
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(rest.len());
    let (token, after) = rest.split_at(end);
    let follows = after.starts_with("\\.") || after.starts_with("(?=\\.)") || after == "$";
    (!token.is_empty() && follows).then(|| token.to_string())
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
            true,
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

    /// Istio's bootstrap tags use ECMAScript lookahead, which Envoy's `std::regex` supports.
    #[test]
    fn istio_lookahead_tag_extracts() {
        let specs = TagSpecs::default();
        specs.set(
            build(&[spec(
                "http_conn_manager_listener_prefix",
                TagValue::Regex(
                    r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"
                        .into(),
                ),
            )])
            .unwrap(),
            false,
        );
        assert!(!specs.use_default_tags());
        let (name, tags) =
            specs.extract("listener.0.0.0.0_15006.http.10.1.2.3_8080.downstream_rq_total");
        assert_eq!(name, "listener.0.0.0.0_15006.http.downstream_rq_total");
        assert_eq!(
            tags,
            [(
                "http_conn_manager_listener_prefix".to_string(),
                "10.1.2.3_8080".to_string()
            )]
        );
        let (name, tags) = specs.extract("listeners.x.http.1.y");
        assert_eq!(
            name, "listeners.x.http.1.y",
            "the lookahead wants a dot after `listener`"
        );
        assert!(tags.is_empty());
    }

    /// Envoy's order: unprefixed specifiers' tags before prefixed ones, every regex matched
    /// against the whole name.
    #[test]
    fn prefixed_specifiers_come_after_the_others() {
        let specs = TagSpecs::default();
        specs.set(
            build(&[
                spec(
                    "cluster_name",
                    TagValue::Regex(r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)".into()),
                ),
                spec(
                    "response_code_class",
                    TagValue::Regex(r"_rq(_(\dxx))$".into()),
                ),
            ])
            .unwrap(),
            false,
        );
        let (name, tags) = specs.extract("cluster.up.upstream_rq_2xx");
        assert_eq!(name, "cluster.upstream_rq");
        assert_eq!(
            tags,
            [("response_code_class", "2xx"), ("cluster_name", "up")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(regex_prefix(r"^cluster\.(x)"), Some("cluster".into()));
        assert_eq!(regex_prefix(r"^listener(?=\.).*"), Some("listener".into()));
        assert_eq!(regex_prefix(r"^mongo$"), Some("mongo".into()));
        assert_eq!(regex_prefix(r"_rq(_(\dxx))$"), None);
        assert_eq!(regex_prefix(r"^(a)\."), None);
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
