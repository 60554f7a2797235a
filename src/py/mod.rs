//! The thin PyO3 layer: converts arguments, results and errors; every wait runs detached.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::error::ChatError;
use crate::events::Event;
use crate::limits::{Network, Rate};
use crate::net::SocketOptions;
use crate::stats::{Counters, DropReason, Stats};
use crate::{Client, ClientConfig, Endpoint, Server, ServerConfig};

mod bus;
mod collector;
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
    match error.raw_os_error() {
        Some(errno) => {
            let text = error.to_string();
            let strerror = text.strip_suffix(&format!(" (os error {errno})")).unwrap_or(&text).to_owned();
            PyOSError::new_err((errno, strerror))
        }
        None => PyOSError::new_err(error.to_string()),
    }
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

/// Waits for the next batch of events, detached and in slices so Ctrl-C is seen.
/// `None` means the socket thread is gone and the queue is empty.
fn next_events<'py>(
    py: Python<'py>,
    events: &Receiver<Event>,
    max_events: usize,
    timeout: Option<f64>,
) -> PyResult<Option<Vec<Bound<'py, PyTuple>>>> {
    let deadline = match timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => {
            return Err(PyValueError::new_err(format!("timeout must be None or a number of seconds >= 0, not {t}")))
        }
        Some(t) => Some(Instant::now() + Duration::from_secs_f64(t.min(1e9))),
        None => None,
    };
    // Take what is queued. When nothing is, wait a moment without blocking on the channel:
    // under load the socket thread then never pays for waking us, and we take the GIL once
    // for many events.
    let queued = py.detach(|| {
        let mut batch: Vec<Event> = events.try_iter().take(max_events.max(1)).collect();
        if batch.is_empty() {
            std::thread::sleep(LINGER);
            batch.extend(events.try_iter().take(max_events.max(1)));
        }
        batch
    });
    if !queued.is_empty() {
        return queued.iter().map(|e| event_tuple(py, e)).collect::<PyResult<Vec<_>>>().map(Some);
    }
    loop {
        let slice = deadline.map_or(SIGNAL_SLICE, |d| d.saturating_duration_since(Instant::now()).min(SIGNAL_SLICE));
        let batch = py.detach(|| match events.recv_timeout(slice) {
            Ok(first) => {
                let mut batch = Vec::with_capacity(max_events.clamp(1, 1024));
                batch.push(first);
                batch.extend(events.try_iter().take(max_events.saturating_sub(1)));
                Ok(batch)
            }
            Err(e) => Err(e),
        });
        match batch {
            Ok(batch) => return batch.iter().map(|e| event_tuple(py, e)).collect::<PyResult<Vec<_>>>().map(Some),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                py.check_signals()?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Some(Vec::new()));
                }
            }
        }
    }
}

fn discard_events(events: &Receiver<Event>, counters: &Counters, unprocessed: usize) -> usize {
    let n = events.try_iter().count() + unprocessed;
    counters.drop_many(DropReason::CallbackQueueFull, n as u64);
    n
}

fn socket_options(defaults: SocketOptions, rcvbuf: Option<usize>, sndbuf: Option<usize>) -> SocketOptions {
    SocketOptions { rcvbuf: rcvbuf.or(defaults.rcvbuf), sndbuf: sndbuf.or(defaults.sndbuf) }
}

/// `#[pymethods]` for a class wrapping an [`Endpoint`] in `inner`: its own methods, given to
/// the macro, and the ones every socket-thread object shares.
macro_rules! endpoint_pymethods {
    (impl $class:ident { $($own:tt)* }) => {
        #[pymethods]
        impl $class {
            $($own)*

            fn local_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                address(py, &Endpoint::local_addr(&self.inner))
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
                match self.inner.event_queue() {
                    Some(events) => next_events(py, events, max_events, timeout),
                    None => Ok(None),
                }
            }

            /// Empties the event queue and counts it, with `unprocessed` events already taken,
            /// as dropped; returns how many were dropped in all.
            #[pyo3(signature = (unprocessed=0))]
            fn discard_events(&self, unprocessed: usize) -> usize {
                match self.inner.event_queue() {
                    Some(events) => discard_events(events, self.inner.counters(), unprocessed),
                    None => 0,
                }
            }

            fn stop(&self, py: Python<'_>) {
                py.detach(|| Endpoint::stop(&self.inner));
            }

            fn is_running(&self) -> bool {
                self.inner.is_running()
            }

            fn failure(&self) -> Option<String> {
                self.inner.failure()
            }

            fn _inject_panic(&self) {
                self.inner.inject_panic();
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
impl PyServer {
    #[new]
    #[pyo3(signature = (host, port, interval, *, bufsize=1024, expiry_grace=None, queue_size=65536, rcvbuf=None, sndbuf=None, drop_unreachable=true, max_clients=crate::config::DEFAULT_MAX_CLIENTS, rate=None, allow=None, validate=false, secret=None, workers=1, bus=None, room=String::from("chatudp")))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        interval: f64,
        bufsize: usize,
        expiry_grace: Option<f64>,
        queue_size: usize,
        rcvbuf: Option<usize>,
        sndbuf: Option<usize>,
        drop_unreachable: bool,
        max_clients: usize,
        rate: Option<(f64, f64)>,
        allow: Option<Vec<String>>,
        validate: bool,
        secret: Option<Vec<u8>>,
        workers: usize,
        bus: Option<Vec<String>>,
        room: String,
    ) -> PyResult<PyServer> {
        let mut config = ServerConfig::new(host, port, interval);
        config.bufsize = bufsize;
        config.expiry_grace = expiry_grace.unwrap_or(config.expiry_grace);
        config.drop_unreachable = drop_unreachable;
        config.max_clients = max_clients;
        config.validate = validate;
        config.secret = secret;
        config.workers = workers;
        config.bus = bus.map(|urls| crate::bus::BusConfig::new(urls, room));
        config.rate = rate.map(|(per_second, burst)| Rate::new(per_second, burst)).transpose().map_err(PyChatError)?;
        config.allow = allow
            .unwrap_or_default()
            .iter()
            .map(|net| Network::parse(net))
            .collect::<Result<_, _>>()
            .map_err(PyChatError)?;
        config.queue_size = queue_size;
        config.socket = socket_options(config.socket, rcvbuf, sndbuf);
        let inner = py.detach(|| Server::start(config)).map_err(PyChatError)?;
        Ok(PyServer { inner })
    }

    fn clients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = py.detach(|| self.inner.clients());
        let dict = PyDict::new(py);
        for (addr, stamp) in snapshot {
            dict.set_item(address(py, &addr)?, stamp)?;
        }
        Ok(dict)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = stats_dict(py, &self.inner.stats())?;
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
impl PyClient {
    #[new]
    #[pyo3(signature = (host, port, interval, *, bufsize=1024, queue_size=65536, rcvbuf=None, sndbuf=None, secret=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        interval: f64,
        bufsize: usize,
        queue_size: usize,
        rcvbuf: Option<usize>,
        sndbuf: Option<usize>,
        secret: Option<Vec<u8>>,
    ) -> PyResult<PyClient> {
        let mut config = ClientConfig::new(host, port, interval);
        config.bufsize = bufsize;
        config.queue_size = queue_size;
        config.socket = socket_options(config.socket, rcvbuf, sndbuf);
        config.secret = secret;
        let inner = py.detach(|| Client::start(config)).map_err(PyChatError)?;
        Ok(PyClient { inner })
    }

    fn send(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        py.detach(|| self.inner.send(data)).map_err(|e| PyChatError(e).into())
    }

    fn remote_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        address(py, &self.inner.remote_addr())
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.inner.stats())
    }

}
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServer>()?;
    m.add_class::<PyClient>()?;
    services::register(m)?;
    m.add_function(wrap_pyfunction!(bus::check_bus, m)?)?;
    collector::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_DATAGRAM", crate::protocol::MAX_DATAGRAM)?;
    m.add("TRAILER_LEN", crate::auth::TRAILER_LEN)?;
    Ok(())
}
