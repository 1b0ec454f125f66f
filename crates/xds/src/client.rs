//! A small ADS client (state of the world): one stream multiplexing every subscription,
//! ACK/NACK decided by the consumer, re-subscription after reconnect with exponential backoff.
//!
//! ```no_run
//! # async fn demo(node: envoy_types::pb::envoy::config::core::v3::Node) {
//! use futures::StreamExt;
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:15010").connect_lazy();
//! let client = wasmesh_xds::client::AdsClient::new(channel, node);
//! let mut lds = client.subscribe(wasmesh_xds::type_url::LISTENER, vec![]);
//! while let Some(update) = lds.next().await {
//!     println!("{} listeners at {}", update.resources.len(), update.version);
//!     update.reply.ack(); // or .nack("why")
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, warn};

/// Reconnect backoff: doubles from `initial` up to `max`, reset after a successful response.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

/// One pushed version of a subscribed type.
#[derive(Debug)]
pub struct Update {
    /// `version_info` of the response.
    pub version: String,
    /// The resources, in the order the server sent them.
    pub resources: Vec<Any>,
    /// ACK or NACK this update. Dropping it unanswered ACKs it.
    pub reply: Reply,
}

/// The ACK/NACK handle of an [`Update`].
#[derive(Debug)]
pub struct Reply {
    cmd: Option<mpsc::UnboundedSender<Command>>,
    type_url: String,
    version: String,
    nonce: String,
    generation: u64,
}

impl Reply {
    /// Accepts the update.
    pub fn ack(mut self) {
        self.send(None);
    }

    /// Rejects the update with `message`; the server keeps serving and we keep the previous config.
    pub fn nack(mut self, message: impl Into<String>) {
        self.send(Some(message.into()));
    }

    fn send(&mut self, error: Option<String>) {
        if let Some(cmd) = self.cmd.take() {
            let _ = cmd.send(Command::Reply {
                type_url: std::mem::take(&mut self.type_url),
                version: std::mem::take(&mut self.version),
                nonce: std::mem::take(&mut self.nonce),
                generation: self.generation,
                error,
            });
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.send(None);
    }
}

/// A stream of [`Update`]s for one type URL.
#[derive(Debug)]
pub struct Subscription {
    type_url: String,
    rx: mpsc::UnboundedReceiver<Update>,
    cmd: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    /// Changes the subscribed resource names (empty = wildcard for LDS/CDS).
    pub fn set_names(&self, names: Vec<String>) {
        let _ = self.cmd.send(Command::SetNames {
            type_url: self.type_url.clone(),
            names,
        });
    }
}

impl Stream for Subscription {
    type Item = Update;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.rx.poll_recv(cx)
    }
}

#[derive(Debug)]
enum Command {
    Subscribe {
        type_url: String,
        names: Vec<String>,
        tx: mpsc::UnboundedSender<Update>,
    },
    SetNames {
        type_url: String,
        names: Vec<String>,
    },
    Reply {
        type_url: String,
        version: String,
        nonce: String,
        generation: u64,
        error: Option<String>,
    },
}

/// Handle to the client task; cheap to clone. The task ends when every handle and subscription
/// is dropped.
#[derive(Debug, Clone)]
pub struct AdsClient {
    cmd: mpsc::UnboundedSender<Command>,
}

impl AdsClient {
    /// Starts a client on `channel` (use `Endpoint::connect_lazy` so the channel reconnects)
    /// identifying as `node`, with the default [`Backoff`].
    pub fn new(channel: Channel, node: Node) -> Self {
        Self::with_backoff(channel, node, Backoff::default())
    }

    /// Like [`AdsClient::new`] with an explicit backoff.
    pub fn with_backoff(channel: Channel, node: Node, backoff: Backoff) -> Self {
        let (cmd, rx) = mpsc::unbounded_channel();
        let task = ClientTask {
            channel,
            node,
            backoff,
            subs: HashMap::new(),
            cmd_tx: cmd.downgrade(),
            generation: 0,
        };
        tokio::spawn(task.run(rx));
        Self { cmd }
    }

    /// Subscribes to `type_url` with `names` (empty = wildcard for LDS/CDS).
    pub fn subscribe(&self, type_url: &str, names: Vec<String>) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.cmd.send(Command::Subscribe {
            type_url: type_url.to_string(),
            names: names.clone(),
            tx,
        });
        Subscription {
            type_url: type_url.to_string(),
            rx,
            cmd: self.cmd.clone(),
        }
    }
}

struct Sub {
    names: Vec<String>,
    tx: mpsc::UnboundedSender<Update>,
    acked_version: String,
    nonce: String,
}

struct ClientTask {
    channel: Channel,
    node: Node,
    backoff: Backoff,
    subs: HashMap<String, Sub>,
    cmd_tx: mpsc::WeakUnboundedSender<Command>,
    generation: u64,
}

enum StreamEnd {
    /// Every handle is gone.
    Closed,
    /// The stream failed; reconnect. `true` if it had delivered a response.
    Failed(bool),
}

impl ClientTask {
    async fn run(mut self, mut cmd_rx: mpsc::UnboundedReceiver<Command>) {
        let mut delay = self.backoff.initial;
        loop {
            match self.stream_once(&mut cmd_rx).await {
                StreamEnd::Closed => return,
                StreamEnd::Failed(progressed) => {
                    if progressed {
                        delay = self.backoff.initial;
                    }
                    debug!(node = %self.node.id, ?delay, "ADS stream lost; reconnecting");
                    // Keep serving commands (new subscriptions) while waiting.
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            cmd = cmd_rx.recv() => match cmd {
                                None => return,
                                Some(c) => self.apply_offline(c),
                            },
                        }
                    }
                    delay = (delay * 2).min(self.backoff.max);
                }
            }
        }
    }

    fn apply_offline(&mut self, c: Command) {
        match c {
            Command::Subscribe {
                type_url,
                names,
                tx,
            } => {
                self.subs.insert(
                    type_url,
                    Sub {
                        names,
                        tx,
                        acked_version: String::new(),
                        nonce: String::new(),
                    },
                );
            }
            Command::SetNames { type_url, names } => {
                if let Some(s) = self.subs.get_mut(&type_url) {
                    s.names = names;
                }
            }
            Command::Reply { .. } => {}
        }
    }

    fn request(&self, type_url: &str, first: bool) -> DiscoveryRequest {
        let sub = self.subs.get(type_url);
        DiscoveryRequest {
            version_info: sub.map(|s| s.acked_version.clone()).unwrap_or_default(),
            node: first.then(|| self.node.clone()),
            resource_names: sub.map(|s| s.names.clone()).unwrap_or_default(),
            type_url: type_url.to_string(),
            response_nonce: sub.map(|s| s.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    async fn stream_once(&mut self, cmd_rx: &mut mpsc::UnboundedReceiver<Command>) -> StreamEnd {
        self.generation += 1;
        let generation = self.generation;
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let mut first = true;
        let mut types: Vec<String> = self.subs.keys().cloned().collect();
        types.sort();
        for t in types {
            if let Some(s) = self.subs.get_mut(&t) {
                s.nonce.clear();
            }
            let _ = req_tx.send(self.request(&t, first));
            first = false;
        }
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(256 << 20);
        let mut inbound = match client
            .stream_aggregated_resources(UnboundedReceiverStream::new(req_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                debug!(node = %self.node.id, %status, "ADS stream failed to open");
                return StreamEnd::Failed(false);
            }
        };
        let mut progressed = false;
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => {
                    let Some(cmd) = cmd else { return StreamEnd::Closed };
                    match cmd {
                        Command::Subscribe { type_url, names, tx } => {
                            self.subs.insert(type_url.clone(), Sub { names, tx, acked_version: String::new(), nonce: String::new() });
                            let _ = req_tx.send(self.request(&type_url, first));
                            first = false;
                        }
                        Command::SetNames { type_url, names } => {
                            if let Some(s) = self.subs.get_mut(&type_url) {
                                s.names = names;
                                let _ = req_tx.send(self.request(&type_url, first));
                                first = false;
                            }
                        }
                        Command::Reply { type_url, version, nonce, generation: g, error } => {
                            if g != generation { continue; }
                            let Some(s) = self.subs.get_mut(&type_url) else { continue };
                            if s.nonce != nonce { continue; }
                            let mut req = match error {
                                None => {
                                    s.acked_version = version;
                                    self.request(&type_url, first)
                                }
                                Some(message) => {
                                    warn!(node = %self.node.id, %type_url, %version, %message, "NACK");
                                    let mut r = self.request(&type_url, first);
                                    r.error_detail = Some(RpcStatus { code: tonic::Code::InvalidArgument as i32, message, details: vec![] });
                                    r
                                }
                            };
                            req.response_nonce = nonce;
                            let _ = req_tx.send(req);
                            first = false;
                        }
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        progressed = true;
                        self.dispatch(resp, generation);
                    }
                    Ok(None) => return StreamEnd::Failed(progressed),
                    Err(status) => {
                        debug!(node = %self.node.id, %status, "ADS stream error");
                        return StreamEnd::Failed(progressed);
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, resp: DiscoveryResponse, generation: u64) {
        let Some(s) = self.subs.get_mut(&resp.type_url) else {
            debug!(type_url = %resp.type_url, "response for a type we did not subscribe to");
            return;
        };
        s.nonce = resp.nonce.clone();
        let update = Update {
            version: resp.version_info.clone(),
            resources: resp.resources,
            reply: Reply {
                cmd: self.cmd_tx.upgrade(),
                type_url: resp.type_url.clone(),
                version: resp.version_info,
                nonce: resp.nonce,
                generation,
            },
        };
        if s.tx.send(update).is_err() {
            self.subs.remove(&resp.type_url);
        }
    }
}
