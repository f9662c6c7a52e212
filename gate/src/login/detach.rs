//! A future that must not stop half-way: the login handler, which places
//! a user on a gate. If the dialogue around it is dropped (its deadline,
//! shutdown), what is left of the handler moves to a task of its own
//! instead of being cut off with the user half placed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// The text of a panic payload, for the log line.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// Runs a future that must not stop half-way where it is, and if this
/// wrapper is dropped before it completed, moves what is left of it to a
/// task of its own. Cheaper than spawning it up front, since almost always
/// it completes in place.
pub(super) struct Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    future: Option<Pin<Box<F>>>,
}

impl<F> Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(super) fn new(future: F) -> Detach<F> {
        Detach {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F> Future for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let future = self
            .future
            .as_mut()
            .expect("Detach polled after completion");
        let output = ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            // No runtime means it is being torn down: nothing would run
            // the task either.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn(future));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detached_future_finishes_after_the_wrapper_is_dropped() {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut detach = Detach::new(async move {
            let _ = go_rx.await;
            let _ = done_tx.send(());
            7
        });
        // Started, then dropped half-way (as a deadline drops a dialogue).
        assert!(futures::poll!(&mut detach).is_pending());
        drop(detach);
        go_tx.send(()).unwrap();
        done_rx.await.unwrap();
    }

    #[tokio::test]
    async fn detached_future_completes_in_place() {
        assert_eq!(Detach::new(async { 7 }).await, 7);
    }
}
