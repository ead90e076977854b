//! A visitor connection's two halves in its one task, each polled only when
//! its own waker fired.
//!
//! `select!` (or `join!`) polls every branch whenever the task wakes: a
//! response arriving re-polled the idle request side (its timer, stop waiter
//! and socket) and a new request re-polled the waiting response side. With
//! hundreds of connections those futures are cold in the cache, and the
//! wasted polls showed in the profile (BENCHMARKS.md, lever 15).
//! `FuturesUnordered` attributes wake-ups too, but yields to the runtime
//! after polling as many futures as it holds, so a half woken by the other
//! one waited a whole turn of the run queue (lever 13). Here a half woken
//! while the task is being polled runs in the same poll, for a bounded
//! number of passes.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

const REQUESTS: u8 = 1;
const RESPONSES: u8 = 2;
/// Set while [`run`] is polling: a half woken then is seen by the poll loop,
/// and the task is not woken again for it.
const POLLING: u8 = 4;
/// Passes over the woken halves in one poll before yielding to the runtime.
/// A bound, not a loop until quiet: a half whose tokio budget is spent wakes
/// itself at once, and only yielding gives it a new budget.
const PASSES: usize = 4;

struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

/// The waker one half is polled with: it marks that half and wakes the task
/// unless the task is polling already.
struct HalfWaker {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for HalfWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let before = self.shared.state.fetch_or(self.bit, Ordering::AcqRel);
        if before & POLLING == 0 {
            self.shared.task.wake();
        }
    }
}

/// Runs both halves until `responses` ends (it decides when the connection
/// ends); a finished `requests` leaves it to answer what is still pending.
pub(super) async fn run<A, B>(requests: A, responses: B)
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    let shared = Arc::new(Shared {
        // The first poll polls both.
        state: AtomicU8::new(REQUESTS | RESPONSES),
        task: AtomicWaker::new(),
    });
    let waker = |bit| {
        Waker::from(Arc::new(HalfWaker {
            shared: shared.clone(),
            bit,
        }))
    };
    let (requests_waker, responses_waker) = (waker(REQUESTS), waker(RESPONSES));
    let mut requests = std::pin::pin!(requests);
    let mut responses = std::pin::pin!(responses);
    let mut requests_done = false;
    std::future::poll_fn(|cx| {
        shared.task.register(cx.waker());
        shared.state.fetch_or(POLLING, Ordering::AcqRel);
        for _ in 0..PASSES {
            // Take the marks, keep POLLING.
            let woken = shared.state.fetch_and(POLLING, Ordering::AcqRel);
            if woken & (REQUESTS | RESPONSES) == 0 {
                match shared
                    .state
                    .compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Poll::Pending,
                    // A half was woken since: another pass.
                    Err(_) => continue,
                }
            }
            if woken & REQUESTS != 0 && !requests_done {
                let mut cx = Context::from_waker(&requests_waker);
                requests_done = requests.as_mut().poll(&mut cx).is_ready();
            }
            if woken & RESPONSES != 0 {
                let mut cx = Context::from_waker(&responses_waker);
                if responses.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(());
                }
            }
        }
        // Still woken: let the runtime run others (and renew the budget).
        shared.state.fetch_and(!POLLING, Ordering::AcqRel);
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
// `#[tokio::test]` expands to the runtime's `block_on`, outside any async code.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// `fut`, counting its polls in `n`.
    fn counted<'a>(
        n: &'a AtomicUsize,
        fut: impl Future<Output = ()> + 'a,
    ) -> impl Future<Output = ()> + 'a {
        let mut fut = Box::pin(fut);
        std::future::poll_fn(move |cx| {
            n.fetch_add(1, Ordering::Relaxed);
            fut.as_mut().poll(cx)
        })
    }

    /// A hundred wake-ups of one half never poll the other, and a half
    /// woken by the other runs (the requests half feeds the responses half).
    #[tokio::test]
    async fn only_the_woken_half_is_polled() {
        let (to_requests, mut requests_rx) = mpsc::channel::<u32>(1);
        let (to_responses, mut responses_rx) = mpsc::channel::<u32>(1);
        let (done_tx, mut done_rx) = mpsc::channel::<u32>(1);
        let (polls_a, polls_b) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let requests = async {
            while let Some(i) = requests_rx.recv().await {
                if i == 100 {
                    // The other half's turn.
                    let _ = to_responses.send(i).await;
                } else {
                    let _ = done_tx.send(i).await;
                }
            }
        };
        let responses = async {
            if let Some(i) = responses_rx.recv().await {
                let _ = done_tx.send(i + 1).await;
            }
        };
        let halves = run(counted(&polls_a, requests), counted(&polls_b, responses));
        let driver = async {
            for i in 0..100 {
                to_requests.send(i).await.unwrap();
                assert_eq!(done_rx.recv().await, Some(i));
            }
            assert_eq!(
                polls_b.load(Ordering::Relaxed),
                1,
                "the idle half was polled for the other's wake-ups"
            );
            assert!(polls_a.load(Ordering::Relaxed) >= 100);
            to_requests.send(100).await.unwrap();
            assert_eq!(done_rx.recv().await, Some(101));
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(halves, driver);
        })
        .await
        .expect("both halves ran to their end");
    }

    /// Wake-ups from other threads, racing the poll loop, are never lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_from_other_threads_are_not_lost() {
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let requests = async {
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
            }
            assert_eq!(n, 20_000);
            let _ = done_tx.send(()).await;
        };
        let responses = async {
            done_rx.recv().await;
        };
        let sender = std::thread::spawn(move || {
            for i in 0..20_000 {
                tx.blocking_send(i).unwrap();
            }
        });
        tokio::time::timeout(Duration::from_secs(20), run(requests, responses))
            .await
            .expect("every message woke the half");
        let _ = tokio::task::spawn_blocking(move || sender.join()).await;
    }

    /// A half that wakes itself at once (as one whose tokio budget is spent
    /// does) does not keep the task: it yields, and another task runs. On a
    /// thread of its own, so a spinning loop fails the test instead of
    /// hanging it.
    #[test]
    fn a_half_that_wakes_itself_yields_to_other_tasks() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let requests = std::future::poll_fn(|cx| {
                    cx.waker().wake_by_ref();
                    Poll::<()>::Pending
                });
                let responses = async {
                    let _ = rx.await;
                };
                let other = tokio::spawn(async move {
                    let _ = tx.send(());
                });
                run(requests, responses).await;
                other.await.unwrap();
            });
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the other task ran: the self-waking half yielded");
    }
}
