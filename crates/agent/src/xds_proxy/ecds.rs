//! Background retry of failed module fetches: the proxy runs the RBAC fallback meanwhile;
//! once the module is fetchable the real plugin is pushed to the proxy.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use futures::future::BoxFuture;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::ProxyInner;
use crate::convert::{Converted, Outcome};

/// Sends a successfully converted resource to the proxy.
pub(crate) type Push = Arc<dyn Fn(Converted) -> BoxFuture<'static, ()> + Send + Sync>;
/// Whether the proxy still subscribes to an ECDS resource name (else its retry stops).
pub(crate) type Wanted = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Retry tasks per ECDS resource name, for one proxy stream.
#[derive(Default)]
pub(crate) struct Retries {
    tasks: HashMap<String, AbortHandle>,
}

impl Retries {
    /// Applies the outcomes of a response: a newer config for a resource supersedes its retry.
    pub(crate) fn update(
        &mut self,
        inner: &Arc<ProxyInner>,
        converted: &[Converted],
        originals: &[Any],
        push: &Push,
        wanted: &Wanted,
    ) {
        for (c, original) in converted.iter().zip(originals) {
            if c.name.is_empty() {
                continue;
            }
            if let Some(old) = self.tasks.remove(&c.name) {
                old.abort();
            }
            if let Outcome::Fallback { .. } = c.outcome {
                let task = tokio::spawn(retry(
                    inner.clone(),
                    c.name.clone(),
                    original.clone(),
                    push.clone(),
                    wanted.clone(),
                ));
                self.tasks.insert(c.name.clone(), task.abort_handle());
            }
        }
        self.tasks.retain(|_, t| !t.is_finished());
    }
}

impl Drop for Retries {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

async fn retry(inner: Arc<ProxyInner>, name: String, original: Any, push: Push, wanted: Wanted) {
    let backoff = inner.opts.fetch_retry;
    let mut delay = backoff.initial;
    let mut attempt = 1u32;
    loop {
        tokio::time::sleep(delay).await;
        if !wanted(&name) {
            debug!(resource = %name, "the proxy no longer subscribes; background retry stopped");
            return;
        }
        match inner.converter.convert_one(&original).await {
            Ok(c) => match &c.outcome {
                Outcome::Rewritten { url, .. } => {
                    info!(resource = %name, url = %url, attempt, "wasm module fetched on background retry; sending the plugin to the proxy");
                    push(c).await;
                    return;
                }
                Outcome::Fallback { .. } => {
                    delay = backoff.next(delay);
                    attempt += 1;
                }
                Outcome::Passthrough => return,
            },
            Err(e) => {
                warn!(resource = %name, error = %e, "background retry stopped");
                return;
            }
        }
    }
}
