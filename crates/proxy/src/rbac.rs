//! `envoy.filters.http.rbac` and `envoy.filters.network.rbac` in the forms whose decision does
//! not depend on the request: allow-all and deny-all (an `ALLOW` action with no policy, a policy
//! whose permissions and principals include `any: true`, a `DENY` action, ...). Anything that
//! would need real matching is rejected at start-up naming the field.

use std::sync::Arc;

use http::StatusCode;
use prost::Message;

use crate::config::ConfigError;
use crate::filter::{
    Any, BuildContext, HeadersStatus, HttpFilter, HttpFilterConfig, LocalBoxFuture, LocalReply,
    RBAC_HTTP_TYPE_URL, RBAC_NETWORK_TYPE_URL, Registry, WorkerContext,
};
use crate::network_filter::{NetStatus, NetworkCx, NetworkFilter, NetworkFilterConfig};
use crate::pb::{http_rbac, network_rbac, rbac};
use crate::stats::Counter;

/// The (request-independent) decision of a rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every request is allowed.
    Allow,
    /// Every request is denied; the matched policy name if a `DENY` policy matched.
    Deny(Option<String>),
}

/// Compiles `rules` (at `path`) into its decision.
pub fn decide(rules: Option<&rbac::Rbac>, path: &str) -> Result<Decision, ConfigError> {
    let Some(rules) = rules else {
        return Ok(Decision::Allow);
    };
    if rules.audit_logging_options.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.audit_logging_options"),
            "RBAC audit logging",
        ));
    }
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut matched = None;
    for name in names {
        let Some(policy) = rules.policies.get(name) else {
            continue;
        };
        let ppath = format!("{path}.policies[{name:?}]");
        if policy.condition.is_some() || policy.checked_condition.is_some() {
            return Err(ConfigError::unsupported(
                format!("{ppath}.condition"),
                "RBAC CEL conditions",
            ));
        }
        let any_perm = policy
            .permissions
            .iter()
            .any(|p| matches!(p.rule, Some(rbac::permission::Rule::Any(true))));
        let any_principal = policy
            .principals
            .iter()
            .any(|p| matches!(p.identifier, Some(rbac::principal::Identifier::Any(true))));
        if !(any_perm && any_principal) {
            return Err(ConfigError::unsupported(
                ppath.clone(),
                "only policies with a permission `any: true` and a principal `any: true` are supported",
            ));
        }
        if matched.is_none() {
            matched = Some(name.clone());
        }
    }
    match rbac::rbac::Action::try_from(rules.action) {
        Ok(rbac::rbac::Action::Allow) => Ok(if matched.is_some() {
            Decision::Allow
        } else {
            Decision::Deny(None)
        }),
        Ok(rbac::rbac::Action::Deny) => Ok(match matched {
            Some(name) => Decision::Deny(Some(name)),
            None => Decision::Allow,
        }),
        _ => Err(ConfigError::unsupported(
            format!("{path}.action"),
            "only ALLOW and DENY",
        )),
    }
}

fn details(policy: &Option<String>) -> String {
    format!(
        "rbac_access_denied_matched_policy[{}]",
        policy.as_deref().unwrap_or("none")
    )
}

/// Registers both RBAC filters.
pub fn register(registry: &mut Registry) {
    registry.register_http(RBAC_HTTP_TYPE_URL, Arc::new(build_http));
    registry.register_network(RBAC_NETWORK_TYPE_URL, Arc::new(build_network));
}

fn decode<M: Message + Default>(any: &Any, ctx: &BuildContext) -> Result<M, ConfigError> {
    M::decode(any.value.as_slice()).map_err(|e| ConfigError::filter(ctx, e))
}

struct HttpRbacConfig {
    decision: Decision,
    allowed: Counter,
    denied: Counter,
}

fn build_http(any: &Any, ctx: &BuildContext) -> Result<Arc<dyn HttpFilterConfig>, ConfigError> {
    let cfg: http_rbac::Rbac = decode(any, ctx)?;
    let path = format!("{}.typed_config", ctx.field_path);
    if cfg.matcher.is_some() || cfg.shadow_matcher.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.matcher"),
            "RBAC matcher API",
        ));
    }
    if cfg.shadow_rules.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.shadow_rules"),
            "RBAC shadow rules",
        ));
    }
    if cfg.track_per_rule_stats {
        return Err(ConfigError::unsupported(
            format!("{path}.track_per_rule_stats"),
            "per-rule stats",
        ));
    }
    let decision = decide(cfg.rules.as_ref(), &format!("{path}.rules"))?;
    let tag = [("envoy_http_conn_manager_prefix", ctx.stat_prefix.as_str())];
    let rp = &cfg.rules_stat_prefix;
    let name = |n: &str| format!("http.{}.rbac.{rp}{n}", ctx.stat_prefix);
    let prom = |n: &str| format!("envoy_http_rbac_{}{n}", sanitize(rp));
    Ok(Arc::new(HttpRbacConfig {
        decision,
        allowed: ctx.stats.counter(&name("allowed"), &prom("allowed"), &tag),
        denied: ctx.stats.counter(&name("denied"), &prom("denied"), &tag),
    }))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl HttpFilterConfig for HttpRbacConfig {
    fn create_filter(&self, _worker: &WorkerContext) -> Box<dyn HttpFilter> {
        Box::new(HttpRbacFilter {
            decision: self.decision.clone(),
            allowed: self.allowed.clone(),
            denied: self.denied.clone(),
        })
    }

    fn uses_bodies(&self) -> bool {
        false
    }
}

struct HttpRbacFilter {
    decision: Decision,
    allowed: Counter,
    denied: Counter,
}

impl HttpFilter for HttpRbacFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        _cx: &'a mut crate::filter::FilterCx,
        _headers: &'a mut http::request::Parts,
        _end_stream: bool,
    ) -> LocalBoxFuture<'a, HeadersStatus> {
        let status = match &self.decision {
            Decision::Allow => {
                self.allowed.inc();
                HeadersStatus::Continue
            }
            Decision::Deny(policy) => {
                self.denied.inc();
                HeadersStatus::LocalReply(LocalReply::new(
                    StatusCode::FORBIDDEN,
                    "RBAC: access denied",
                    details(policy),
                ))
            }
        };
        Box::pin(std::future::ready(status))
    }
}

struct NetworkRbacConfig {
    decision: Decision,
    allowed: Counter,
    denied: Counter,
}

fn build_network(
    any: &Any,
    ctx: &BuildContext,
) -> Result<Arc<dyn NetworkFilterConfig>, ConfigError> {
    let cfg: network_rbac::Rbac = decode(any, ctx)?;
    let path = format!("{}.typed_config", ctx.field_path);
    if cfg.matcher.is_some() || cfg.shadow_matcher.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.matcher"),
            "RBAC matcher API",
        ));
    }
    if cfg.shadow_rules.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.shadow_rules"),
            "RBAC shadow rules",
        ));
    }
    if cfg.delay_deny.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.delay_deny"),
            "delayed deny",
        ));
    }
    if cfg.enforcement_type != 0 {
        return Err(ConfigError::unsupported(
            format!("{path}.enforcement_type"),
            "only ONE_TIME_ON_FIRST_BYTE",
        ));
    }
    let decision = decide(cfg.rules.as_ref(), &format!("{path}.rules"))?;
    let p = &cfg.stat_prefix;
    let name = |n: &str| {
        if p.is_empty() {
            format!("rbac.{n}")
        } else {
            format!("{p}.rbac.{n}")
        }
    };
    let prom = |n: &str| {
        if p.is_empty() {
            format!("envoy_rbac_{n}")
        } else {
            format!("envoy_{}_rbac_{n}", sanitize(p))
        }
    };
    Ok(Arc::new(NetworkRbacConfig {
        decision,
        allowed: ctx.stats.counter(&name("allowed"), &prom("allowed"), &[]),
        denied: ctx.stats.counter(&name("denied"), &prom("denied"), &[]),
    }))
}

impl NetworkFilterConfig for NetworkRbacConfig {
    fn create_filter(&self, _worker: &WorkerContext) -> Box<dyn NetworkFilter> {
        Box::new(NetworkRbacFilter {
            decision: self.decision.clone(),
            allowed: self.allowed.clone(),
            denied: self.denied.clone(),
        })
    }

    fn connection_only(&self) -> bool {
        true
    }
}

struct NetworkRbacFilter {
    decision: Decision,
    allowed: Counter,
    denied: Counter,
}

impl NetworkFilter for NetworkRbacFilter {
    fn on_new_connection<'a>(&'a mut self, cx: &'a mut NetworkCx) -> LocalBoxFuture<'a, NetStatus> {
        match self.decision {
            Decision::Allow => self.allowed.inc(),
            Decision::Deny(_) => {
                self.denied.inc();
                cx.close();
            }
        }
        Box::pin(std::future::ready(NetStatus::Continue))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn any_policy() -> rbac::Policy {
        rbac::Policy {
            permissions: vec![rbac::Permission {
                rule: Some(rbac::permission::Rule::Any(true)),
            }],
            principals: vec![rbac::Principal {
                identifier: Some(rbac::principal::Identifier::Any(true)),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn allow_all_and_deny_all_forms() {
        assert_eq!(decide(None, "r").unwrap(), Decision::Allow);
        let allow_none = rbac::Rbac {
            action: 0,
            ..Default::default()
        };
        assert_eq!(
            decide(Some(&allow_none), "r").unwrap(),
            Decision::Deny(None)
        );
        let deny_any = rbac::Rbac {
            action: 1,
            policies: HashMap::from([("all".to_string(), any_policy())]),
            ..Default::default()
        };
        assert_eq!(
            decide(Some(&deny_any), "r").unwrap(),
            Decision::Deny(Some("all".into()))
        );
        let allow_any = rbac::Rbac {
            action: 0,
            ..deny_any.clone()
        };
        assert_eq!(decide(Some(&allow_any), "r").unwrap(), Decision::Allow);
        let mut specific = any_policy();
        specific.principals = vec![rbac::Principal {
            identifier: Some(rbac::principal::Identifier::Authenticated(
                Default::default(),
            )),
        }];
        let r = rbac::Rbac {
            policies: HashMap::from([("p".to_string(), specific)]),
            ..Default::default()
        };
        let err = decide(Some(&r), "x.rules").unwrap_err().to_string();
        assert!(err.contains("x.rules.policies[\"p\"]"), "{err}");
    }
}
