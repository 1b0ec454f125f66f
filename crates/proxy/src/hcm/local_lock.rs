//! An async lock for state shared by tasks of one worker thread (a stream's filter state, used
//! by the stream task, the codec polling the filtered body and the end-of-stream bookkeeping).
//! The stream takes it about ten times per request with a filter; tokio's `Mutex` (atomics and
//! a semaphore per acquire) cost ~0.5 µs of that, this one is a `RefCell` borrow. Waiters are
//! only queued under contention (a plugin holding the stream while a body frame arrives).

use std::cell::{RefCell, RefMut};
use std::future::poll_fn;
use std::ops::{Deref, DerefMut};
use std::task::{Poll, Waker};

/// A lock for one thread: `lock().await` waits while another task holds it.
pub(crate) struct LocalLock<T> {
    value: RefCell<T>,
    waiters: RefCell<Vec<Waker>>,
}

/// Holds the lock; wakes the tasks waiting for it when dropped.
pub(crate) struct Guard<'a, T> {
    value: RefMut<'a, T>,
    lock: &'a LocalLock<T>,
}

impl<T> LocalLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            value: RefCell::new(value),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Takes the lock now, if it is free.
    pub(crate) fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.value
            .try_borrow_mut()
            .ok()
            .map(|value| Guard { value, lock: self })
    }

    /// Takes the lock, waiting for the task that holds it.
    pub(crate) async fn lock(&self) -> Guard<'_, T> {
        poll_fn(|cx| match self.try_lock() {
            Some(g) => Poll::Ready(g),
            None => {
                let mut w = self.waiters.borrow_mut();
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

impl<T> Drop for Guard<'_, T> {
    /// Every waiter is woken (one of them may have been dropped meanwhile); those that lose
    /// the race queue again. The borrow itself ends right after this, before any of them runs.
    fn drop(&mut self) {
        let waiters = std::mem::take(&mut *self.lock.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_gets_the_lock_when_the_holder_drops_it() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let lock = Rc::new(LocalLock::new(0u32));
                let g = lock.lock().await;
                assert!(lock.try_lock().is_none(), "held");
                let l2 = Rc::clone(&lock);
                let waiter = tokio::task::spawn_local(async move {
                    let mut g = l2.lock().await;
                    *g += 1;
                    *g
                });
                tokio::task::yield_now().await;
                assert!(!waiter.is_finished(), "the waiter must wait for the holder");
                drop(g);
                assert_eq!(waiter.await.ok(), Some(1));
                assert_eq!(*lock.lock().await, 1);
            })
            .await;
    }
}
