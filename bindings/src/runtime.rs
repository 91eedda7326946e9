//! The tokio runtime every exported call runs on, and the hand-off of each
//! call's result to the foreign executor that awaits it.
//!
//! Foreign async calls are polled by the caller's executor (a Kotlin
//! coroutine dispatcher, Swift's cooperative pool, Python's event loop),
//! none of which is a tokio runtime. So each call is spawned here, and
//! what crosses the boundary is a [`Call`], a future any executor can poll.
//!
//! Why not just the task's `JoinHandle`: waking a foreign future calls
//! into foreign code from the waking thread (Python schedules the next
//! poll on its loop from inside that callback). The caller can see the
//! result and go on, even exit, while that callback is still running; an
//! interpreter that is finalizing ends such a thread with `pthread_exit`,
//! and the forced unwind through tokio's `catch_unwind` aborts the process
//! ("FATAL: exception not rethrown"). A `Call` is dropped when the caller
//! frees the finished future, and its drop waits until the wake has
//! returned, so no thread of ours is inside foreign code after the caller
//! has moved on.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Condvar, Mutex, OnceLock, PoisonError},
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::FutureExt as _;
use tokio::runtime::Runtime;

use crate::KithError;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// How long dropping a [`Call`] waits for its wake to return. A wake only
/// schedules a poll, so this is only reached if the foreign side hangs.
const WAKE_WAIT: Duration = Duration::from_secs(5);

/// The runtime, started on first use.
///
/// Two worker threads: the calls themselves mostly hand work to the
/// client's actors (which have threads of their own) and wait.
pub(crate) fn get() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        // Without a runtime nothing can run at all, and there is no caller
        // to hand an error to yet: failing to start one is fatal.
        #[allow(clippy::expect_used)]
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kith-ffi")
            .enable_all()
            .build()
            .expect("start the kith-ffi tokio runtime")
    })
}

/// Run `future` on the runtime; the returned future can be awaited from
/// any executor.
///
/// A panic inside the call is reported as [`KithError::Internal`] instead
/// of unwinding into foreign code.
pub(crate) fn run<T, F>(future: F) -> Call<T>
where
    F: Future<Output = Result<T, KithError>> + Send + 'static,
    T: Send + 'static,
{
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            result: None,
            waker: None,
            waking: false,
        }),
        woken: Condvar::new(),
    });
    let task = Arc::clone(&shared);
    get().spawn(async move {
        let result = AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(KithError::Internal("the call panicked".into())));
        let waker = {
            let mut slot = task.lock();
            slot.result = Some(result);
            slot.waking = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        task.lock().waking = false;
        task.woken.notify_all();
    });
    Call { shared }
}

/// The result of a call, awaited by foreign code. See the module docs.
pub(crate) struct Call<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    /// Signalled when a wake in progress has returned.
    woken: Condvar,
}

struct Slot<T> {
    result: Option<Result<T, KithError>>,
    waker: Option<Waker>,
    /// The task is calling the waker (into foreign code).
    waking: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Future for Call<T> {
    type Output = Result<T, KithError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.shared.lock();
        match slot.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Call<T> {
    fn drop(&mut self) {
        let slot = self.shared.lock();
        let _ = self
            .shared
            .woken
            .wait_timeout_while(slot, WAKE_WAIT, |slot| slot.waking)
            .unwrap_or_else(PoisonError::into_inner);
    }
}
