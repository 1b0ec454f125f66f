//! From watch events to the set of objects the source wants to serve, each as the YAML document
//! a user would have written, so that the directory source's parser validates it (same errors,
//! same field paths).

use std::collections::BTreeMap;

use kube::api::{ApiResource, DynamicObject, TypeMeta};
use kube::runtime::watcher::Event;

/// The only Secret type the control plane reads: image pull secrets.
pub(crate) const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";

/// kubectl's copy of the whole applied object; for a Secret it holds the secret data again.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One watched resource type.
#[derive(Debug, Clone)]
pub(crate) struct WatchedKind {
    /// Group, version, kind and plural.
    pub(crate) resource: ApiResource,
    /// Server-side field selector (Secrets: only image pull secrets).
    pub(crate) field_selector: Option<String>,
}

impl WatchedKind {
    /// `k8s://<plural>.<group>/<version>`: where a failing watch is reported in the status.
    pub(crate) fn status_key(&self) -> String {
        let r = &self.resource;
        if r.group.is_empty() {
            format!("k8s://{}/{}", r.plural, r.version)
        } else {
            format!("k8s://{}.{}/{}", r.plural, r.group, r.version)
        }
    }

    fn wants(&self, obj: &DynamicObject) -> bool {
        self.resource.kind != "Secret"
            || obj.data.get("type").and_then(|t| t.as_str()) == Some(DOCKER_CONFIG_JSON)
    }
}

/// `k8s://<Kind>/<namespace>/<name>`: the object's key in the source status.
pub(crate) fn object_key(kind: &str, obj: &DynamicObject) -> String {
    format!(
        "k8s://{kind}/{}/{}",
        obj.metadata.namespace.as_deref().unwrap_or("default"),
        obj.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The object as a YAML document. List items of built-in kinds come without `apiVersion` and
/// `kind`, so they are filled in from the watched type. Server-managed bulk (managedFields, the
/// last-applied annotation) is dropped.
pub(crate) fn to_yaml(resource: &ApiResource, mut obj: DynamicObject) -> Result<String, String> {
    if obj.types.is_none() {
        obj.types = Some(TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
    }
    obj.metadata.managed_fields = None;
    if let Some(a) = obj.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    // Through a JSON value: DynamicObject flattens its fields, which a YAML serializer may not
    // handle directly.
    let value = serde_json::to_value(&obj).map_err(|e| format!("cannot encode the object: {e}"))?;
    serde_saphyr::to_string(&value).map_err(|e| format!("cannot encode the object: {e}"))
}

/// The objects of one watched type, kept from its watch events.
#[derive(Debug, Default)]
pub(crate) struct KindObjects {
    /// Key → YAML document, or why it could not be encoded.
    pub(crate) objects: BTreeMap<String, Result<String, String>>,
    /// Objects of a list in progress; they replace `objects` when the list is complete.
    relist: Option<BTreeMap<String, Result<String, String>>>,
    /// A complete list has been seen at least once.
    pub(crate) synced: bool,
}

impl KindObjects {
    /// Applies one watch event; returns whether the wanted objects changed.
    pub(crate) fn on_event(&mut self, kind: &WatchedKind, event: Event<DynamicObject>) -> bool {
        let entry = |obj: DynamicObject| {
            let key = object_key(&kind.resource.kind, &obj);
            let wanted = kind.wants(&obj);
            (key, wanted.then(|| to_yaml(&kind.resource, obj)))
        };
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                if let (key, Some(doc)) = entry(obj) {
                    self.relist.get_or_insert_default().insert(key, doc);
                }
                false
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let changed = !self.synced || listed != self.objects;
                self.objects = listed;
                self.synced = true;
                changed
            }
            Event::Apply(obj) => match entry(obj) {
                (key, Some(doc)) => self.objects.insert(key, doc.clone()) != Some(doc),
                // A Secret whose type changed away from dockerconfigjson.
                (key, None) => self.objects.remove(&key).is_some(),
            },
            Event::Delete(obj) => self.objects.remove(&entry(obj).0).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::GroupVersionKind;

    fn wasm_kind() -> WatchedKind {
        WatchedKind {
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("extensions.istio.io", "v1alpha1", "WasmPlugin"),
                "wasmplugins",
            ),
            field_selector: None,
        }
    }

    fn secret_kind() -> WatchedKind {
        WatchedKind {
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("", "v1", "Secret"),
                "secrets",
            ),
            field_selector: None,
        }
    }

    fn obj(json: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json).unwrap()
    }

    fn plugin(v: serde_json::Value) -> DynamicObject {
        obj(serde_json::json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {
                "name": "p", "namespace": "app", "resourceVersion": "7",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {"url": "oci://r/p", "pluginConfig": {"v": v}},
        }))
    }

    #[test]
    fn objects_become_documents_the_file_parser_accepts_with_their_values_and_types() {
        // Strings that look like other YAML scalars must stay strings.
        let v = serde_json::json!({"s": "true", "n": "1.5", "e": "", "x": 1.5, "b": false,
                                   "m": "a\n---\nb", "nul": null});
        let doc = to_yaml(&wasm_kind().resource, plugin(v.clone())).unwrap();
        assert!(!doc.contains("managedFields"), "{doc}");
        let parsed = crate::validate::parse_file("k8s://WasmPlugin/app/p", &doc, &mut |_, _, _| 0);
        assert!(parsed.errors.is_empty(), "{:?}\n{doc}", parsed.errors);
        let crate::config::Resource::WasmPlugin(p) = &parsed.resources[0] else {
            panic!("not a plugin")
        };
        assert_eq!(p.spec.plugin_config.as_ref().unwrap()["v"], v);
        assert_eq!(p.meta.resource_version, "7");
        assert_eq!(p.meta.created, 1_704_067_200_000_000_000);
    }

    #[test]
    fn yaml_level_errors_name_the_field_path() {
        let mut o = plugin(serde_json::json!(1));
        o.data["spec"]["bogus"] = serde_json::json!(true);
        let doc = to_yaml(&wasm_kind().resource, o).unwrap();
        let parsed = crate::validate::parse_file("k8s://WasmPlugin/app/p", &doc, &mut |_, _, _| 0);
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        let e = &parsed.errors[0];
        assert_eq!(e.resource, "WasmPlugin app/p");
        assert!(e.path.starts_with("spec.bogus"), "{e}");
    }

    #[test]
    fn list_then_events_then_relist_track_the_wanted_objects() {
        let kind = secret_kind();
        // List items of built-in kinds carry no apiVersion/kind.
        let secret = |name: &str, ty: &str| {
            obj(serde_json::json!({
                "metadata": {"name": name, "namespace": "app",
                             "annotations": {LAST_APPLIED: "{\"data\":\"c2VjcmV0\"}"}},
                "type": ty, "data": {".dockerconfigjson": "e30="},
            }))
        };
        let mut k = KindObjects::default();
        assert!(!k.on_event(&kind, Event::Init));
        assert!(!k.on_event(&kind, Event::InitApply(secret("pull", DOCKER_CONFIG_JSON))));
        assert!(!k.on_event(&kind, Event::InitApply(secret("tls", "kubernetes.io/tls"))));
        assert!(k.on_event(&kind, Event::InitDone), "first list is a change");
        assert!(k.synced);
        let keys: Vec<_> = k.objects.keys().cloned().collect();
        assert_eq!(
            keys,
            ["k8s://Secret/app/pull"],
            "only pull secrets are kept"
        );
        let doc = k.objects["k8s://Secret/app/pull"].as_ref().unwrap();
        assert!(
            doc.contains("apiVersion: v1") && doc.contains("kind: Secret"),
            "{doc}"
        );
        assert!(
            !doc.contains("c2VjcmV0"),
            "last-applied copy dropped: {doc}"
        );

        // Same content again: no change. A type change away from pull secret removes it.
        assert!(!k.on_event(&kind, Event::Apply(secret("pull", DOCKER_CONFIG_JSON))));
        assert!(k.on_event(&kind, Event::Apply(secret("pull", "Opaque"))));
        assert!(k.objects.is_empty());
        assert!(k.on_event(&kind, Event::Apply(secret("pull", DOCKER_CONFIG_JSON))));
        assert!(k.on_event(&kind, Event::Delete(secret("pull", DOCKER_CONFIG_JSON))));
        assert!(!k.on_event(&kind, Event::Delete(secret("pull", DOCKER_CONFIG_JSON))));

        // A relist replaces everything at InitDone (objects deleted while disconnected go).
        k.on_event(&kind, Event::Apply(secret("a", DOCKER_CONFIG_JSON)));
        k.on_event(&kind, Event::Init);
        k.on_event(&kind, Event::InitApply(secret("b", DOCKER_CONFIG_JSON)));
        assert!(
            k.objects.contains_key("k8s://Secret/app/a"),
            "kept until InitDone"
        );
        assert!(k.on_event(&kind, Event::InitDone));
        let keys: Vec<_> = k.objects.keys().cloned().collect();
        assert_eq!(keys, ["k8s://Secret/app/b"]);
    }
}
