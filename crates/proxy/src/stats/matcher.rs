//! The bootstrap's `stats_config.stats_matcher`: which stats exist. Envoy never creates a
//! rejected stat, so it shows in neither `/stats` nor `/stats/prometheus`; here a rejected stat
//! still counts but is left out of both. Istio's bootstrap keeps only a list of prefixes
//! (`reporter=`, `cluster_manager`, `listener_manager`, `server`, ...).

use std::sync::{Arc, RwLock};

use envoy_types::pb::envoy::config::metrics::v3::StatsMatcher as Pb;
use envoy_types::pb::envoy::config::metrics::v3::stats_matcher::StatsMatcher as Kind;

use crate::config::ConfigError;
use crate::route::{StringMatch, string_match};

/// Which stat names are kept.
#[derive(Debug, Default)]
pub enum Matcher {
    /// No matcher: every stat.
    #[default]
    All,
    /// `reject_all: true`.
    None,
    /// `inclusion_list`: the names some pattern matches.
    Include(Vec<StringMatch>),
    /// `exclusion_list`: the names no pattern matches.
    Exclude(Vec<StringMatch>),
}

impl Matcher {
    /// Builds `stats_config.stats_matcher`; a bad pattern is an error naming it.
    pub fn build(m: &Pb) -> Result<Self, ConfigError> {
        const PATH: &str = "stats_config.stats_matcher";
        let list = |l: &envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher,
                    field: &str| {
            l.patterns
                .iter()
                .enumerate()
                .map(|(i, p)| string_match(p, &format!("{PATH}.{field}.patterns[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match &m.stats_matcher {
            None | Some(Kind::RejectAll(false)) => Matcher::All,
            Some(Kind::RejectAll(true)) => Matcher::None,
            Some(Kind::InclusionList(l)) => Matcher::Include(list(l, "inclusion_list")?),
            Some(Kind::ExclusionList(l)) => Matcher::Exclude(list(l, "exclusion_list")?),
        })
    }

    /// Whether the stat named `name` (its full flat name) is kept.
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::None => false,
            Matcher::Include(p) => p.iter().any(|m| m.matches(name)),
            Matcher::Exclude(p) => !p.iter().any(|m| m.matches(name)),
        }
    }
}

/// The matcher in force, shared by the store and the plugin-metric renderers.
#[derive(Debug, Clone, Default)]
pub struct StatsMatcher(Arc<RwLock<Matcher>>);

impl StatsMatcher {
    /// Replaces the matcher (a new bootstrap).
    pub fn set(&self, m: Matcher) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = m;
    }

    /// Whether the stat named `name` is kept.
    pub fn accepts(&self, name: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .accepts(name)
    }

    /// Whether every stat is kept (nothing to check).
    pub fn keeps_all(&self) -> bool {
        matches!(
            *self.0.read().unwrap_or_else(|e| e.into_inner()),
            Matcher::All
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        ListStringMatcher, RegexMatcher, StringMatcher,
    };

    fn pat(p: MatchPattern) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(p),
            ..Default::default()
        }
    }

    fn list() -> ListStringMatcher {
        ListStringMatcher {
            patterns: vec![
                pat(MatchPattern::Prefix("server".into())),
                pat(MatchPattern::Suffix("downstream_cx_active".into())),
                pat(MatchPattern::SafeRegex(RegexMatcher {
                    regex: r"vhost\..*\.route\..*".into(),
                    ..Default::default()
                })),
            ],
        }
    }

    /// Istio's bootstrap shape: prefixes, suffixes and a (full-match) regex.
    #[test]
    fn inclusion_and_exclusion_lists() {
        let inc = Matcher::build(&Pb {
            stats_matcher: Some(Kind::InclusionList(list())),
        })
        .unwrap();
        assert!(inc.accepts("server.state"));
        assert!(inc.accepts("http.ingress.downstream_cx_active"));
        assert!(inc.accepts("vhost.a.route.b.upstream_rq_total"));
        assert!(
            !inc.accepts("x.vhost.a.route.b"),
            "regexes match whole names"
        );
        assert!(!inc.accepts("cluster.c.upstream_rq_total"));
        let exc = Matcher::build(&Pb {
            stats_matcher: Some(Kind::ExclusionList(list())),
        })
        .unwrap();
        assert!(!exc.accepts("server.state"));
        assert!(exc.accepts("cluster.c.upstream_rq_total"));
        let none = Matcher::build(&Pb {
            stats_matcher: Some(Kind::RejectAll(true)),
        })
        .unwrap();
        assert!(!none.accepts("server.state"));
    }

    #[test]
    fn a_bad_pattern_names_its_field() {
        let e = Matcher::build(&Pb {
            stats_matcher: Some(Kind::InclusionList(ListStringMatcher {
                patterns: vec![
                    pat(MatchPattern::Prefix("a".into())),
                    pat(MatchPattern::SafeRegex(RegexMatcher {
                        regex: "(".into(),
                        ..Default::default()
                    })),
                ],
            })),
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("stats_config.stats_matcher.inclusion_list.patterns[1]"),
            "{e}"
        );
    }
}
