//! The thin PyO3 layer: converts arguments, results and errors; every wait runs detached.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::error::ChatError;
use crate::events::{Batch, Event, EventReceiver, Pull, Route};
use crate::stats::{Counters, DropReason, Stats};
use crate::{Client, Endpoint, Server};

mod bus;
mod collector;
mod config;
mod services;

pyo3::import_exception!(chatudp.errors, ClosedError);

/// How long the dispatcher lets events gather before it blocks on an empty queue.
const LINGER: Duration = Duration::from_millis(1);
/// Longest a wait stays detached before it checks for Ctrl-C.
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

struct PyChatError(ChatError);

impl From<ChatError> for PyChatError {
    fn from(e: ChatError) -> Self {
        PyChatError(e)
    }
}

impl From<PyChatError> for PyErr {
    fn from(PyChatError(e): PyChatError) -> PyErr {
        match e {
            ChatError::Io(io) => os_error(&io),
            ChatError::InvalidArgument(_) => PyValueError::new_err(e.to_string()),
            ChatError::TooLong { .. } | ChatError::Undeliverable { .. } => {
                PyOSError::new_err((libc::EMSGSIZE, e.to_string()))
            }
            ChatError::Closed(_) => ClosedError::new_err(e.to_string()),
            ChatError::Failed(_) => PyRuntimeError::new_err(e.to_string()),
        }
    }
}

/// `OSError(errno, strerror)`, which Python turns into the matching subclass
/// (`ConnectionRefusedError`, ...) with `.errno` set, as the socket module raises it.
fn os_error(error: &std::io::Error) -> PyErr {
    if let Some(lookup) = error.get_ref().and_then(|e| e.downcast_ref::<crate::net::LookupFailed>()) {
        return lookup_error(lookup);
    }
    match error.raw_os_error() {
        Some(errno) => {
            let text = error.to_string();
            let strerror = text.strip_suffix(&format!(" (os error {errno})")).unwrap_or(&text).to_owned();
            PyOSError::new_err((errno, strerror))
        }
        None => PyOSError::new_err(error.to_string()),
    }
}

/// `socket.gaierror(EAI_NONAME, ...)`, as `socket.getaddrinfo` raises it, naming the host.
fn lookup_error(lookup: &crate::net::LookupFailed) -> PyErr {
    Python::attach(|py| {
        let socket = match py.import("socket") {
            Ok(socket) => socket,
            Err(e) => return e,
        };
        let errno = socket.getattr("EAI_NONAME").and_then(|v| v.extract::<i32>()).unwrap_or(-2);
        match socket.getattr("gaierror").and_then(|cls| cls.call1((errno, lookup.to_string()))) {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        }
    })
}

fn address<'py>(py: Python<'py>, addr: &SocketAddr) -> PyResult<Bound<'py, PyTuple>> {
    let host = addr.ip().to_string();
    match addr {
        SocketAddr::V4(v4) => {
            PyTuple::new(py, [host.into_pyobject(py)?.into_any(), v4.port().into_pyobject(py)?.into_any()])
        }
        // Python spells an IPv6 address as a 4-tuple (host, port, flowinfo, scope_id).
        SocketAddr::V6(v6) => PyTuple::new(
            py,
            [
                host.into_pyobject(py)?.into_any(),
                v6.port().into_pyobject(py)?.into_any(),
                v6.flowinfo().into_pyobject(py)?.into_any(),
                v6.scope_id().into_pyobject(py)?.into_any(),
            ],
        ),
    }
}

/// `{name: count, ..., "dropped": {reason: count}, "send_errors": {errno: count}}`.
pub(super) fn counters_dict<'py>(
    py: Python<'py>,
    counts: &[(&str, u64)],
    dropped: impl Fn(DropReason) -> u64,
    send_errors: &std::collections::BTreeMap<i32, u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in counts {
        dict.set_item(name, value)?;
    }
    let by_reason = PyDict::new(py);
    for reason in DropReason::ALL {
        by_reason.set_item(reason.name(), dropped(reason))?;
    }
    dict.set_item("dropped", by_reason)?;
    dict.set_item("send_errors", send_errors.clone())?;
    Ok(dict)
}

fn stats_dict<'py>(py: Python<'py>, stats: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let counts = [
        ("received", stats.received),
        ("relayed", stats.relayed),
        ("sent", stats.sent),
        ("truncated", stats.truncated),
        ("expired", stats.expired),
        ("unreachable", stats.unreachable),
        ("joins", stats.joins),
        ("leaves", stats.leaves),
        ("heartbeats", stats.heartbeats),
    ];
    let dict = counters_dict(py, &counts, |reason| stats.dropped(reason), &stats.send_errors)?;
    let refused = PyDict::new(py);
    for (why, n) in &stats.auth_refused {
        refused.set_item(why.name(), n)?;
    }
    dict.set_item("auth_refused", refused)?;
    Ok(dict)
}

fn event_tuple<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyTuple>> {
    let (kind, addr, detail) = match event {
        Event::Message { data, from } => (intern!(py, "message"), from, PyBytes::new(py, data).into_any()),
        Event::Join(addr) => (intern!(py, "join"), addr, py.None().into_bound(py)),
        Event::Leave(addr, reason) => (intern!(py, "leave"), addr, reason.name().into_pyobject(py)?.into_any()),
        Event::Reject(addr, reason) => (intern!(py, "reject"), addr, reason.name().into_pyobject(py)?.into_any()),
    };
    PyTuple::new(py, [kind.clone().into_any(), address(py, addr)?.into_any(), detail])
}

/// A panic inside an entry point (a bug) becomes a `RuntimeError`, never pyo3's
/// `PanicException`, which is a `BaseException` that `except Exception` would not catch.
pub(crate) fn guarded<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(PyRuntimeError::new_err(format!("internal error in chatudp ({why}); please report it")))
    })
}

/// A `timeout` argument: `None` or infinity mean no limit; NaN and negative values are refused.
pub(crate) fn deadline(name: &str, timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => {
            Err(PyValueError::new_err(format!("{name} must be None or a number of seconds >= 0, not {t}")))
        }
        Some(t) if t.is_infinite() => Ok(None),
        Some(t) => Ok(Some(Instant::now() + Duration::from_secs_f64(t.min(1e9)))),
    }
}

/// Waits in slices with the GIL released, until `attempt` gives an answer or `deadline` passes
/// (`Ok(None)`); between slices Python's signal handlers run (Ctrl-C raises), with no lock held.
pub(crate) fn wait_detached<T: Send>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(Duration) -> Option<T> + Send,
) -> PyResult<Option<T>> {
    loop {
        let slice = deadline.map_or(SIGNAL_SLICE, |d| d.saturating_duration_since(Instant::now()).min(SIGNAL_SLICE));
        if let Some(answer) = py.detach(|| attempt(slice)) {
            return Ok(Some(answer));
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}

/// The dispatcher's next events: `None` once the socket thread is gone and the queue is empty.
/// A `("kept", None, None)` tuple in the batch says a message was kept while an asynchronous
/// consumer waited for one.
fn next_events<'py>(
    py: Python<'py>,
    events: &EventReceiver,
    max_events: usize,
    timeout: Option<f64>,
) -> PyResult<Option<Vec<Bound<'py, PyTuple>>>> {
    let deadline = deadline("timeout", timeout)?;
    let mut linger = LINGER;
    let batch = wait_detached(py, deadline, |slice| {
        let batch = events.next_batch(max_events, std::mem::take(&mut linger), slice);
        match &batch {
            Batch::Events(list, ready) if list.is_empty() && !ready => None,
            _ => Some(batch),
        }
    })?;
    match batch {
        None => Ok(Some(Vec::new())),
        Some(Batch::Closed) => Ok(None),
        Some(Batch::Events(list, ready)) => {
            let mut tuples = list.iter().map(|e| event_tuple(py, e)).collect::<PyResult<Vec<_>>>()?;
            if ready {
                let none = py.None().into_bound(py);
                tuples.push(PyTuple::new(py, [intern!(py, "kept").clone().into_any(), none.clone(), none])?);
            }
            Ok(Some(tuples))
        }
    }
}

/// The oldest kept message; `None` after `timeout`; `ClosedError` once the socket thread is
/// gone and every kept message was read.
fn pull<'py>(py: Python<'py>, events: &EventReceiver, timeout: Option<f64>, what: &str) -> PyResult<Option<Kept<'py>>> {
    let deadline = deadline("timeout", timeout)?;
    let got = wait_detached(py, deadline, |slice| match events.pull(slice) {
        Pull::Empty => None,
        other => Some(other),
    })?;
    match got {
        None => Ok(None),
        Some(Pull::Message((data, from))) => Ok(Some((PyBytes::new(py, &data), address(py, &from)?))),
        Some(Pull::Closed) | Some(Pull::Empty) => {
            Err(ClosedError::new_err(format!("this {what} is stopped and every message was read")))
        }
    }
}

type Kept<'py> = (Bound<'py, PyBytes>, Bound<'py, PyTuple>);

fn discard_events(events: &EventReceiver, counters: &Counters, unprocessed: usize) -> usize {
    let n = events.clear() + unprocessed;
    counters.drop_many(DropReason::CallbackQueueFull, n as u64);
    n
}

/// A route as the constructors take it: `backlog` 0 (none) or within the bounds.
fn checked_route(route: Route) -> PyResult<Route> {
    if route.backlog > 0 {
        crate::events::validate_bound("backlog", route.backlog).map_err(PyChatError)?;
    }
    Ok(route)
}

/// `#[pymethods]` for a class wrapping an [`Endpoint`] in `inner`: its own methods, given to
/// the macro, and the ones every socket-thread object shares.
macro_rules! endpoint_pymethods {
    (impl $class:ident as $kind:literal { $($own:tt)* }) => {
        #[pymethods]
        impl $class {
            $($own)*

            fn local_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                guarded(|| address(py, &Endpoint::local_addr(&self.inner)))
            }

            /// The next events as `(kind, addr, detail)` tuples; `[]` after `timeout`; `None`
            /// once the socket thread is gone and the queue is empty (or was never asked for).
            #[pyo3(signature = (max_events=1024, timeout=None))]
            fn next_events<'py>(
                &self,
                py: Python<'py>,
                max_events: usize,
                timeout: Option<f64>,
            ) -> PyResult<Option<Vec<Bound<'py, PyTuple>>>> {
                guarded(|| match self.inner.event_queue() {
                    Some(events) if !self.inner.is_forked_copy() => next_events(py, events, max_events, timeout),
                    _ => Ok(None),
                })
            }

            /// Empties the event queue and counts it, with `unprocessed` events already taken,
            /// as dropped; returns how many were dropped in all.
            #[pyo3(signature = (unprocessed=0))]
            fn discard_events(&self, unprocessed: usize) -> PyResult<usize> {
                guarded(|| match self.inner.event_queue() {
                    Some(events) if !self.inner.is_forked_copy() => Ok(discard_events(events, self.inner.counters(), unprocessed)),
                    _ => Ok(0),
                })
            }

            /// Where events go: to `next_events` by kind, and how many messages are kept for
            /// `pull` (0: none). Events nobody asked for are never built.
            #[pyo3(signature = (*, messages, joins, leaves, rejects, backlog))]
            fn set_route(&self, messages: bool, joins: bool, leaves: bool, rejects: bool, backlog: usize) -> PyResult<()> {
                guarded(|| {
                    let route = checked_route(Route { messages, joins, leaves, rejects, backlog })?;
                    if let Some(events) = self.inner.event_queue() {
                        events.set_route(route);
                    }
                    Ok(())
                })
            }

            /// The oldest kept message `(data, addr)`, waiting at most `timeout` seconds (`None`
            /// or infinity: no limit) with the GIL released; `None` after the timeout;
            /// `ClosedError` once stopped and every kept message was read.
            #[pyo3(signature = (timeout=None))]
            fn pull<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Option<Kept<'py>>> {
                guarded(|| match self.inner.event_queue() {
                    Some(events) if !self.inner.is_forked_copy() => pull(py, events, timeout, $kind),
                    _ => Err(ClosedError::new_err(format!("this {} is stopped and every message was read", $kind))),
                })
            }

            /// For `arecv`: `True` when the dispatcher will get a `"kept"` event with the next
            /// kept message; `False` when there is no need to wait (a message is there, or the
            /// object is stopped).
            fn arm_async(&self) -> PyResult<bool> {
                guarded(|| match self.inner.event_queue() {
                    Some(events) if !self.inner.is_forked_copy() => Ok(events.arm_async()),
                    _ => Ok(false),
                })
            }

            /// Messages the backlog dropped to make room for newer ones.
            fn backlog_dropped(&self) -> PyResult<u64> {
                guarded(|| Ok(self.inner.event_queue().map_or(0, |events| events.backlog_dropped())))
            }

            fn stop(&self, py: Python<'_>) -> PyResult<()> {
                guarded(|| {
                    py.detach(|| Endpoint::stop(&self.inner));
                    Ok(())
                })
            }

            fn is_running(&self) -> PyResult<bool> {
                guarded(|| Ok(self.inner.is_running()))
            }

            /// True in a child made by `os.fork()`: the object is inert there.
            fn is_forked_copy(&self) -> PyResult<bool> {
                guarded(|| Ok(self.inner.is_forked_copy()))
            }

            fn failure(&self) -> PyResult<Option<String>> {
                guarded(|| Ok(self.inner.failure()))
            }

            fn _inject_panic(&self) -> PyResult<()> {
                guarded(|| {
                    self.inner.inject_panic();
                    Ok(())
                })
            }
        }
    };
}
pub(crate) use endpoint_pymethods;

/// A running group-chat server (the Rust half of `chatudp.ChatUdpServer`).
#[pyclass(frozen, name = "Server", module = "chatudp._core")]
struct PyServer {
    inner: Server,
}

endpoint_pymethods! {
impl PyServer as "ChatUdpServer" {
    #[new]
    #[pyo3(signature = (config, *, messages=true, joins=true, leaves=true, rejects=true, backlog=0))]
    fn new(
        py: Python<'_>,
        config: &config::PyServerConfig,
        messages: bool,
        joins: bool,
        leaves: bool,
        rejects: bool,
        backlog: usize,
    ) -> PyResult<PyServer> {
        guarded(|| {
            let mut config = config.inner.clone();
            config.route = checked_route(Route { messages, joins, leaves, rejects, backlog })?;
            let inner = py.detach(|| Server::start(config)).map_err(PyChatError)?;
            Ok(PyServer { inner })
        })
    }

    fn clients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guarded(|| {
            let snapshot = py.detach(|| self.inner.clients());
            let dict = PyDict::new(py);
            for (addr, stamp) in snapshot {
                dict.set_item(address(py, &addr)?, stamp)?;
            }
            Ok(dict)
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = guarded(|| stats_dict(py, &self.inner.stats()))?;
        if let Some(bus) = self.inner.bus() {
            stats.set_item("bus", bus::stats_dict(py, bus)?)?;
        }
        Ok(stats)
    }

    /// The other relays of the room, alive now; `[]` without a bus.
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyList>> {
        match self.inner.bus() {
            Some(bus) => bus::peers_list(py, bus),
            None => Ok(pyo3::types::PyList::empty(py)),
        }
    }

}
}

/// A running chat client (the Rust half of `chatudp.ChatUdpClient`).
#[pyclass(frozen, name = "Client", module = "chatudp._core")]
struct PyClient {
    inner: Client,
}

endpoint_pymethods! {
impl PyClient as "ChatUdpClient" {
    #[new]
    #[pyo3(signature = (config, *, messages=true, backlog=0))]
    fn new(py: Python<'_>, config: &config::PyClientConfig, messages: bool, backlog: usize) -> PyResult<PyClient> {
        guarded(|| {
            let mut config = config.inner.clone();
            config.route = checked_route(Route { messages, backlog, ..Route::default() })?;
            let inner = py.detach(|| Client::start(config)).map_err(PyChatError)?;
            Ok(PyClient { inner })
        })
    }

    fn send(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        guarded(|| py.detach(|| self.inner.send(data)).map_err(|e| PyChatError(e).into()))
    }

    fn remote_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        guarded(|| address(py, &self.inner.remote_addr()))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guarded(|| stats_dict(py, &self.inner.stats()))
    }

}
}

/// Test seam: a panic inside an entry point, to prove it reaches Python as `RuntimeError`.
#[pyfunction]
fn _panic_for_test() -> PyResult<()> {
    guarded(|| panic!("panic requested by a test"))
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServer>()?;
    m.add_class::<PyClient>()?;
    services::register(m)?;
    config::register(m)?;
    collector::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_DATAGRAM", crate::protocol::MAX_DATAGRAM)?;
    m.add("MAX_QUEUE", crate::events::MAX_QUEUE)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add("TRAILER_LEN", crate::auth::TRAILER_LEN)?;
    Ok(())
}
