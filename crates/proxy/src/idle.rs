//! A worker's open connections, and what it does when it goes quiet (no client connection for
//! [`SETTLE`]). When a client goes, the streams it had in flight and their upstream connections
//! are torn down by their own tasks over the next turns of the loop; once that is over, a quiet
//! worker:
//!
//! 1. closes pooled idle upstream HTTP/1.1 connections beyond a few per host (the pool keeps
//!    up to 128 per host for bursts; a quiet worker keeps [`KEPT_WHEN_QUIET`] warm);
//! 2. runs the binary's hook (the allocator's collect): the allocator keeps a worker's freed
//!    pages for reuse and only returns them when that thread allocates again, so a worker that
//!    went quiet after a burst (h2 streams, their upstream connections) would sit on them.
//!
//! At most once per [`MIN_GAP`] on one worker.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

/// Least time between two runs on one worker.
const MIN_GAP: Duration = Duration::from_millis(100);
/// How long a worker must have been without connections to be quiet.
const SETTLE: Duration = Duration::from_millis(50);
/// Idle upstream HTTP/1.1 connections a quiet worker keeps per host.
pub(crate) const KEPT_WHEN_QUIET: usize = 8;

/// What a quiet worker does: trims its pools (the worker's own), then the binary's hook.
pub(crate) struct QuietActions {
    /// Closes idle upstream connections beyond a few per host.
    pub(crate) trim: Box<dyn Fn()>,
    /// The allocator's collect, from the binary.
    pub(crate) hook: Option<fn()>,
}

/// The open connections of one worker.
pub(crate) struct Active {
    count: Cell<usize>,
    actions: QuietActions,
    last_run: Cell<Option<Instant>>,
    deferred: Cell<bool>,
}

impl Active {
    pub(crate) fn new(actions: QuietActions) -> Self {
        Self {
            count: Cell::new(0),
            actions,
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

    /// A connection closed; true when it was the last one. The quiet actions then run once the
    /// worker has stayed without connections for [`SETTLE`].
    pub(crate) fn closed(self: &Rc<Self>) -> bool {
        self.count.set(self.count.get().saturating_sub(1));
        if self.count.get() > 0 {
            return false;
        }
        if !self.deferred.replace(true) {
            let this = Rc::clone(self);
            tokio::task::spawn_local(async move {
                let mut at = Instant::now() + SETTLE;
                if let Some(last) = this.last_run.get() {
                    at = at.max(last + MIN_GAP);
                }
                tokio::time::sleep_until(at).await;
                this.deferred.set(false);
                if this.count.get() == 0 {
                    this.run_quiet().await;
                }
            });
        }
        true
    }

    async fn run_quiet(&self) {
        let start = Instant::now();
        self.last_run.set(Some(start));
        (self.actions.trim)();
        let Some(hook) = self.actions.hook else {
            return;
        };
        // Let the connections just released finish and free their buffers first.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.count.get() == 0 {
            hook();
        }
        tracing::debug!(took = ?start.elapsed(), "worker quiet: trimmed pools, ran the idle hook");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static HOOK_RUNS: Cell<usize> = const { Cell::new(0) };
    }

    fn hook() {
        HOOK_RUNS.with(|n| n.set(n.get() + 1));
    }

    fn active(trims: &Rc<Cell<usize>>) -> Rc<Active> {
        let t = Rc::clone(trims);
        Rc::new(Active::new(QuietActions {
            trim: Box::new(move || t.set(t.get() + 1)),
            hook: Some(hook),
        }))
    }

    fn run(f: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    #[test]
    fn runs_once_the_worker_stayed_quiet() {
        run(async {
            HOOK_RUNS.with(|n| n.set(0));
            let trims = Rc::new(Cell::new(0));
            let a = active(&trims);
            a.opened();
            a.opened();
            assert!(!a.closed());
            assert!(a.closed());
            tokio::time::sleep(SETTLE / 2).await;
            assert_eq!(trims.get(), 0, "not before SETTLE");
            tokio::time::sleep(SETTLE).await;
            assert_eq!(trims.get(), 1);
            assert_eq!(HOOK_RUNS.with(Cell::get), 1);
        });
    }

    #[test]
    fn a_connection_that_comes_back_in_time_cancels_the_run() {
        run(async {
            HOOK_RUNS.with(|n| n.set(0));
            let trims = Rc::new(Cell::new(0));
            let a = active(&trims);
            a.opened();
            assert!(a.closed());
            tokio::time::sleep(SETTLE / 2).await;
            a.opened();
            tokio::time::sleep(SETTLE * 4).await;
            assert_eq!(trims.get(), 0);
            assert_eq!(HOOK_RUNS.with(Cell::get), 0);
            // It goes quiet again: runs, but not sooner than MIN_GAP after a previous run.
            assert!(a.closed());
            tokio::time::sleep(SETTLE + Duration::from_millis(10)).await;
            assert_eq!(trims.get(), 1);
            a.opened();
            assert!(a.closed());
            tokio::time::sleep(SETTLE + Duration::from_millis(10)).await;
            assert_eq!(trims.get(), 1, "MIN_GAP since the last run not over");
            tokio::time::sleep(MIN_GAP).await;
            assert_eq!(trims.get(), 2);
            assert_eq!(HOOK_RUNS.with(Cell::get), 2);
        });
    }
}
