//! Process-wide shared data (key/value with CAS) and shared queues, shared by every VM.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::Status;

/// Something that delivers `proxy_on_queue_ready` to a VM on its own thread. The proxy posts
/// to the worker that owns the VM; it must never call into a VM synchronously.
pub trait QueueNotifier: Send + Sync {
    /// One item was enqueued on `queue_id`, registered by root context `root_context_id`.
    fn notify(&self, root_context_id: u32, queue_id: u32);
}

/// Limits on shared state (cpp-host has none; a host should add some).
#[derive(Debug, Clone, Copy)]
pub struct SharedLimits {
    /// Most bytes of keys + values per vm_id.
    pub max_data_bytes: usize,
    /// Most items waiting in one queue; enqueueing beyond it drops the oldest item, so
    /// producers never block and memory stays bounded.
    pub max_queue_items: usize,
}

impl Default for SharedLimits {
    fn default() -> Self {
        Self {
            max_data_bytes: 64 << 20,
            max_queue_items: 10_000,
        }
    }
}

#[derive(Default)]
struct DataSpace {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    bytes: usize,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    registrant: Option<(Arc<dyn QueueNotifier>, u32)>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    by_id: HashMap<u32, Queue>,
    next_id: u32,
}

/// Shared data and queues for the whole process.
#[derive(Default)]
pub struct Shared {
    limits: SharedLimits,
    data: Mutex<(HashMap<String, DataSpace>, u32)>,
    queues: Mutex<Queues>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data itself is still consistent
    // (every update is a single insert), so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Shared state with the given limits.
    pub fn new(limits: SharedLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            ..Default::default()
        })
    }

    /// `proxy_get_shared_data`: the value and its cas, or `None`.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let g = lock(&self.data);
        g.0.get(vm_id).and_then(|s| s.entries.get(key)).cloned()
    }

    /// `proxy_set_shared_data` with cpp-host's CAS rules (ABI doc 4.5).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Status {
        let mut g = lock(&self.data);
        let (spaces, next_cas) = &mut *g;
        let space = spaces.entry(vm_id.to_string()).or_default();
        let old_len = match space.entries.get(key) {
            Some((old, stored_cas)) => {
                if cas != 0 && cas != *stored_cas {
                    return Status::CasMismatch;
                }
                key.len() + old.len()
            }
            None => 0,
        };
        let new_bytes = space.bytes - old_len + key.len() + value.len();
        if new_bytes > self.limits.max_data_bytes {
            return Status::InternalFailure;
        }
        *next_cas = next_cas.wrapping_add(1).max(1);
        space.bytes = new_bytes;
        space
            .entries
            .insert(key.to_vec(), (value.to_vec(), *next_cas));
        Status::Ok
    }

    /// `proxy_register_shared_queue`: creates or reopens `(vm_id, name)` and makes `notifier`
    /// (for `root_context_id`) the one told about new items.
    pub fn register_queue(
        &self,
        vm_id: &str,
        name: &[u8],
        notifier: Arc<dyn QueueNotifier>,
        root_context_id: u32,
    ) -> u32 {
        let mut q = lock(&self.queues);
        let key = (vm_id.to_string(), name.to_vec());
        let id = match q.by_name.get(&key) {
            Some(id) => *id,
            None => {
                q.next_id += 1;
                let id = q.next_id;
                q.by_name.insert(key, id);
                q.by_id.insert(
                    id,
                    Queue {
                        items: VecDeque::new(),
                        registrant: None,
                    },
                );
                id
            }
        };
        if let Some(queue) = q.by_id.get_mut(&id) {
            queue.registrant = Some((notifier, root_context_id));
        }
        id
    }

    /// `proxy_resolve_shared_queue`.
    pub fn resolve_queue(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        lock(&self.queues)
            .by_name
            .get(&(vm_id.to_string(), name.to_vec()))
            .copied()
    }

    /// `proxy_enqueue_shared_queue`: appends and notifies the registrant (outside the lock).
    pub fn enqueue(&self, queue_id: u32, data: &[u8]) -> Status {
        let target = {
            let mut q = lock(&self.queues);
            let Some(queue) = q.by_id.get_mut(&queue_id) else {
                return Status::NotFound;
            };
            if queue.items.len() >= self.limits.max_queue_items {
                queue.items.pop_front();
            }
            queue.items.push_back(data.to_vec());
            queue.registrant.clone()
        };
        if let Some((notifier, root)) = target {
            notifier.notify(root, queue_id);
        }
        Status::Ok
    }

    /// `proxy_dequeue_shared_queue`: `Err(NotFound)` for an unknown queue, `Err(Empty)` if empty.
    pub fn dequeue(&self, queue_id: u32) -> Result<Vec<u8>, Status> {
        let mut q = lock(&self.queues);
        let queue = q.by_id.get_mut(&queue_id).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn cas_rules_match_cpp_host() {
        let s = Shared::new(SharedLimits::default());
        assert_eq!(s.get("vm", b"k"), None);
        // stale cas on an absent key creates it
        assert_eq!(s.set("vm", b"k", b"1", 77), Status::Ok);
        let (v, cas) = s.get("vm", b"k").expect("set");
        assert_eq!(v, b"1");
        assert_ne!(cas, 0);
        assert_eq!(s.set("vm", b"k", b"2", cas + 1), Status::CasMismatch);
        assert_eq!(s.set("vm", b"k", b"2", cas), Status::Ok);
        let (v, cas2) = s.get("vm", b"k").expect("set");
        assert_eq!(v, b"2");
        assert!(cas2 > cas);
        assert_eq!(
            s.set("vm", b"k", b"3", 0),
            Status::Ok,
            "cas 0 is unconditional"
        );
        // other vm ids are separate spaces
        assert_eq!(s.get("other", b"k"), None);
    }

    #[test]
    fn data_is_bounded() {
        let s = Shared::new(SharedLimits {
            max_data_bytes: 10,
            max_queue_items: 2,
        });
        assert_eq!(s.set("vm", b"k", b"12345678", 0), Status::Ok);
        assert_eq!(s.set("vm", b"k2", b"12345678", 0), Status::InternalFailure);
        assert_eq!(
            s.set("vm", b"k", b"1234", 0),
            Status::Ok,
            "overwrite frees the old size"
        );
    }

    struct Count(AtomicU32);
    impl QueueNotifier for Count {
        fn notify(&self, _root: u32, _q: u32) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn queues_notify_last_registrant_and_are_fifo() {
        let s = Shared::new(SharedLimits {
            max_data_bytes: 100,
            max_queue_items: 2,
        });
        let a = Arc::new(Count(AtomicU32::new(0)));
        let b = Arc::new(Count(AtomicU32::new(0)));
        let id = s.register_queue("vm", b"q", a.clone(), 1);
        assert_eq!(s.resolve_queue("vm", b"q"), Some(id));
        assert_eq!(s.resolve_queue("", b"q"), None);
        assert_eq!(s.register_queue("vm", b"q", b.clone(), 2), id);
        assert_eq!(s.enqueue(id, b"1"), Status::Ok);
        assert_eq!(s.enqueue(id, b"2"), Status::Ok);
        assert_eq!(s.enqueue(id, b"3"), Status::Ok);
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.0.load(Ordering::SeqCst), 3);
        // bounded: the oldest item was dropped
        assert_eq!(s.dequeue(id), Ok(b"2".to_vec()));
        assert_eq!(s.dequeue(id), Ok(b"3".to_vec()));
        assert_eq!(s.dequeue(id), Err(Status::Empty));
        assert_eq!(s.dequeue(id + 1), Err(Status::NotFound));
        assert_eq!(s.enqueue(id + 1, b"x"), Status::NotFound);
    }
}
