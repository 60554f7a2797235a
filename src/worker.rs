//! A socket thread with a prompt, idempotent stop, shared by every server and client.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use parking_lot::Mutex;

use crate::events::EventReceiver;
use crate::net::Waker;
use crate::stats::Counters;

/// The shortest period of any timer of a socket thread (expiry sweep, heartbeat), in seconds:
/// a tinier `interval` must not make a loop spin.
pub const MIN_TIMER_PERIOD: f64 = 0.001;

/// Wall-clock seconds, as the original's `datetime.now().timestamp()`.
pub fn wall_clock() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What the socket thread and its owner share.
#[derive(Default)]
pub struct Control {
    stopping: AtomicBool,
    failure: Mutex<Option<String>>,
    panic_requested: AtomicBool,
}

impl Control {
    /// Asked by the socket thread at every turn of its loop.
    pub fn is_stopping(&self) -> bool {
        if self.panic_requested.load(Ordering::Relaxed) {
            panic!("panic injected by a test");
        }
        self.stopping.load(Ordering::Acquire)
    }
}

pub struct Worker {
    control: Arc<Control>,
    /// The process that started the thread: in a child made by `fork()` the thread does not
    /// exist, and the worker is inert (not running, `stop()` does nothing).
    owner: u32,
    /// Dropped by `stop()`: with the thread's own handle gone too, the poller's descriptors close.
    waker: Mutex<Option<Waker>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Runs `body` on a new thread named `name`, and returns once that thread runs (named, in
    /// the loop's code), so whoever counts threads right after sees it. A panic in `body` is
    /// caught and kept as the worker's failure instead of tearing down the process.
    pub fn spawn(name: &str, waker: Waker, body: impl FnOnce(&Control) + Send + 'static) -> std::io::Result<Worker> {
        let control = Arc::new(Control::default());
        let thread_control = Arc::clone(&control);
        let (running, started) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let _ = running.send(());
            let outcome = catch_unwind(AssertUnwindSafe(|| body(&thread_control)));
            if let Err(payload) = outcome {
                *thread_control.failure.lock() = Some(panic_message(&*payload));
            }
        })?;
        // Err only if the thread ended before it could say so, which the join below reports.
        let _ = started.recv();
        Ok(Worker {
            control,
            owner: std::process::id(),
            waker: Mutex::new(Some(waker)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// This process is a `fork()` child of the one that started the thread: the thread (and
    /// whatever it held locked) is not here.
    pub fn is_forked_copy(&self) -> bool {
        std::process::id() != self.owner
    }

    /// Asks the thread to finish and waits for it. Safe to call any number of times from any
    /// thread; a second caller waits until the first has finished. A no-op in a forked child.
    pub fn stop(&self) {
        if self.is_forked_copy() {
            return;
        }
        let mut thread = self.thread.lock();
        self.control.stopping.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
        if let Some(handle) = thread.take() {
            // The body catches its own panics, so join cannot fail.
            let _ = handle.join();
        }
    }

    pub fn is_running(&self) -> bool {
        !self.is_forked_copy()
            && !self.control.stopping.load(Ordering::Acquire)
            && self.thread.lock().as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Makes the socket thread panic at its next turn: a test seam for the panic path.
    pub fn inject_panic(&self) {
        self.control.panic_requested.store(true, Ordering::Relaxed);
        if let Some(waker) = self.waker.lock().as_ref() {
            waker.wake();
        }
    }

    /// The panic message, when the thread died of one.
    pub fn failure(&self) -> Option<String> {
        self.control.failure.lock().clone()
    }
}

/// What every object with a socket thread (server, client, echo and time servers) offers.
pub trait Endpoint {
    fn worker(&self) -> &Worker;
    fn counters(&self) -> &Counters;
    /// Events for the owner, in the order the socket thread saw them; `None` when not asked for.
    fn event_queue(&self) -> Option<&EventReceiver>;
    /// The address actually bound.
    fn local_addr(&self) -> SocketAddr;

    /// Ends the socket thread (a server first says `Bye!` to its clients). Prompt, idempotent.
    fn stop(&self) {
        self.worker().stop();
    }

    fn is_running(&self) -> bool {
        self.worker().is_running()
    }

    /// In a `fork()` child: inert, its thread is in the parent.
    fn is_forked_copy(&self) -> bool {
        self.worker().is_forked_copy()
    }

    /// The panic message, when the socket thread died of one.
    fn failure(&self) -> Option<String> {
        self.worker().failure()
    }

    /// Test seam: makes the socket thread panic.
    #[doc(hidden)]
    fn inject_panic(&self) {
        self.worker().inject_panic();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.is_forked_copy() {
            // The parent's thread is not ours to join or detach.
            std::mem::forget(self.thread.get_mut().take());
            return;
        }
        self.stop();
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
