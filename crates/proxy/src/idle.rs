//! A worker's open connections, and what it does when the last one closes. The allocator keeps
//! a worker's freed pages for reuse and only returns them when that thread allocates again;
//! after a burst of connections (h2 streams hold their buffers) a worker that then goes quiet
//! would sit on them. The binary passes a hook (the allocator's collect) that the worker runs on
//! its own thread when it has no connection left, at most once per [`MIN_GAP`] (a run that comes
//! too soon is deferred to the end of the gap, not dropped).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Least time between two runs of the hook on one worker.
const MIN_GAP: Duration = Duration::from_millis(100);

/// The open connections of one worker.
pub(crate) struct Active {
    count: Cell<usize>,
    hook: Option<fn()>,
    last_run: Cell<Option<Instant>>,
    deferred: Cell<bool>,
}

impl Active {
    pub(crate) fn new(hook: Option<fn()>) -> Self {
        Self {
            count: Cell::new(0),
            hook,
            last_run: Cell::new(None),
            deferred: Cell::new(false),
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count.get()
    }

    pub(crate) fn opened(&self) {
        self.count.set(self.count.get() + 1);
    }

    /// A connection closed; true when it was the last one (the hook then runs or is deferred).
    pub(crate) fn closed(self: &Rc<Self>) -> bool {
        self.count.set(self.count.get().saturating_sub(1));
        if self.count.get() > 0 {
            return false;
        }
        let Some(hook) = self.hook else {
            return true;
        };
        match self.last_run.get() {
            Some(last) if Instant::now() < last + MIN_GAP => {
                if !self.deferred.replace(true) {
                    let this = Rc::clone(self);
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep_until((last + MIN_GAP).into()).await;
                        this.deferred.set(false);
                        if this.count.get() == 0 {
                            this.run(hook);
                        }
                    });
                }
            }
            _ => self.run(hook),
        }
        true
    }

    fn run(&self, hook: fn()) {
        let start = Instant::now();
        self.last_run.set(Some(start));
        hook();
        tracing::debug!(took = ?start.elapsed(), "worker idle: ran the idle hook");
    }
}
