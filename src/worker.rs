//! A socket thread with a prompt, idempotent stop, shared by every server and client.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::events::Event;
use crate::net::Waker;
use crate::stats::Counters;

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
    /// Dropped by `stop()`: with the thread's own handle gone too, the poller's descriptors close.
    waker: Mutex<Option<Waker>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Runs `body` on a new thread named `name`. A panic in `body` is caught and kept as the
    /// worker's failure instead of tearing down the process.
    pub fn spawn(name: &str, waker: Waker, body: impl FnOnce(&Control) + Send + 'static) -> std::io::Result<Worker> {
        let control = Arc::new(Control::default());
        let thread_control = Arc::clone(&control);
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| body(&thread_control)));
            if let Err(payload) = outcome {
                *thread_control.failure.lock() = Some(panic_message(&*payload));
            }
        })?;
        Ok(Worker { control, waker: Mutex::new(Some(waker)), thread: Mutex::new(Some(thread)) })
    }

    /// Asks the thread to finish and waits for it. Safe to call any number of times from any
    /// thread; a second caller waits until the first has finished.
    pub fn stop(&self) {
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
        !self.control.stopping.load(Ordering::Acquire) && self.thread.lock().as_ref().is_some_and(|t| !t.is_finished())
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
    fn event_queue(&self) -> Option<&Receiver<Event>>;
    /// The address actually bound.
    fn local_addr(&self) -> SocketAddr;

    /// Ends the socket thread (a server first says `Bye!` to its clients). Prompt, idempotent.
    fn stop(&self) {
        self.worker().stop();
    }

    fn is_running(&self) -> bool {
        self.worker().is_running()
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
