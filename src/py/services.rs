//! The PyO3 layer of the echo and time servers and of the request/response peer: argument and
//! result conversion only. Every wait runs detached, in slices, with a Ctrl-C check between.

use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::config::{PyPeerConfig, PyServiceConfig};
use super::{
    address, checked_route, counters_dict, deadline, discard_events, endpoint_pymethods, guarded, next_events, pull,
    wait_detached, ClosedError, Kept, PyChatError, Route, SIGNAL_SLICE,
};
use crate::error::ChatError;
use crate::net;
use crate::peer::{Request, RequestPoll, UdpPeer};
use crate::services::{Service, ServiceServer, ServiceStats};
use crate::Endpoint;

fn py_err(error: ChatError) -> PyErr {
    PyChatError(error).into()
}

fn service_stats<'py>(py: Python<'py>, stats: &ServiceStats) -> PyResult<Bound<'py, PyDict>> {
    let counts = [
        ("received", stats.received),
        ("answered", stats.answered),
        ("bad_requests", stats.bad_requests),
        ("sent", stats.sent),
        ("truncated", stats.truncated),
    ];
    let dict = counters_dict(py, &counts, |reason| stats.dropped(reason), &stats.send_errors)?;
    dict.set_item("kernel_drops", stats.kernel_drops)?;
    Ok(dict)
}

macro_rules! service_class {
    ($rust:ident, $python:literal, $service:expr, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(frozen, name = $python, module = "chatudp._core")]
        struct $rust {
            inner: ServiceServer,
        }

        endpoint_pymethods! {
        impl $rust as $python {
            /// Binds and starts with `config`; with `events`, every request is also queued as
            /// an event for `next_events` (up to the config's `queue_size`).
            #[new]
            #[pyo3(signature = (config, *, events=false))]
            fn new(py: Python<'_>, config: &PyServiceConfig, events: bool) -> PyResult<Self> {
                guarded(|| {
                    let mut config = config.inner.clone();
                    if !events {
                        config.events = None;
                    }
                    let inner = py.detach(|| ServiceServer::start($service, config)).map_err(py_err)?;
                    Ok($rust { inner })
                })
            }

            fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                guarded(|| {
                    let stats = py.detach(|| self.inner.stats());
                    service_stats(py, &stats)
                })
            }
        }
        }
    };
}

service_class!(
    PyEchoServer,
    "EchoServer",
    Service::Echo,
    "A running echo server: answers each datagram with `data.upper()`."
);
service_class!(
    PyTimeServer,
    "TimeServer",
    Service::Time,
    "A running time server: answers each datagram with `time.strftime(fmt)`."
);

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    // Infinity means no limit (a billion seconds); NaN compares false.
    if value >= 0.0 {
        Ok(Duration::from_secs_f64(value.min(1e9)))
    } else {
        Err(PyValueError::new_err(format!("{name} must be a number of seconds >= 0, not {value}")))
    }
}

fn resolve(py: Python<'_>, host: &str, port: u16) -> PyResult<SocketAddr> {
    py.detach(|| net::resolve(host, port)).map_err(|e| py_err(ChatError::Io(e)))
}

type Received<'py> = (Bound<'py, PyBytes>, Bound<'py, PyTuple>);

fn received<'py>(py: Python<'py>, data: &[u8], from: &SocketAddr) -> PyResult<Received<'py>> {
    Ok((PyBytes::new(py, data), address(py, from)?))
}

/// A non-connected UDP socket for request/response clients (the Rust half of
/// `chatudp.services.QQPeer`, `EchoClient` and `TimeClient`).
#[pyclass(frozen, name = "Peer", module = "chatudp._core")]
struct PyPeer {
    inner: UdpPeer,
}

#[pymethods]
impl PyPeer {
    /// Binds to the config's `(host, port)`; port 0 picks a free port.
    #[new]
    fn new(py: Python<'_>, config: &PyPeerConfig) -> PyResult<PyPeer> {
        guarded(|| {
            let config = &config.inner;
            let local = resolve(py, &config.host, config.port)?;
            let inner = py.detach(|| UdpPeer::bind(local, config.bufsize, config.socket)).map_err(py_err)?;
            Ok(PyPeer { inner })
        })
    }

    /// A peer on a free port of the family of the config's remote `(host, port)`, and that
    /// address resolved.
    #[staticmethod]
    fn for_remote<'py>(py: Python<'py>, config: &PyPeerConfig) -> PyResult<(PyPeer, Bound<'py, PyTuple>)> {
        guarded(|| {
            let config = &config.inner;
            let remote = resolve(py, &config.host, config.port)?;
            let inner = py.detach(|| UdpPeer::for_remote(remote, config.bufsize, config.socket)).map_err(py_err)?;
            Ok((PyPeer { inner }, address(py, &remote)?))
        })
    }

    fn local_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        guarded(|| address(py, &self.inner.local_addr()))
    }

    /// Sends `data` to `addr`, a `(host, port)` tuple.
    fn send_to(&self, py: Python<'_>, data: &[u8], addr: Bound<'_, PyAny>) -> PyResult<()> {
        guarded(|| {
            let (host, port) = super::config::address("addr", &addr)?;
            let to = resolve(py, &host, port)?;
            py.detach(|| self.inner.send_to(data, to)).map_err(py_err)
        })
    }

    /// One datagram from anyone, or `None` after `timeout` seconds (`None` or infinity: no limit).
    #[pyo3(signature = (timeout=None))]
    fn recv_from<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Option<Received<'py>>> {
        guarded(|| {
            let deadline = deadline("timeout", timeout)?;
            let got = wait_detached(py, deadline, |slice| self.inner.recv_from(slice).transpose())?;
            match got.transpose().map_err(py_err)? {
                Some((data, from)) => received(py, &data, &from).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Sends `data` to `(host, port)` and waits for its reply, resending after each `timeout`
    /// seconds up to `retries` more times; `None` when no reply came.
    #[pyo3(signature = (data, host, port, timeout, retries))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        host: String,
        port: u16,
        timeout: f64,
        retries: u32,
    ) -> PyResult<Option<Received<'py>>> {
        guarded(|| {
            let to = resolve(py, &host, port)?;
            let timeout = seconds("timeout", timeout)?;
            let mut request = py.detach(|| Request::start(&self.inner, data, to, timeout, retries)).map_err(py_err)?;
            loop {
                match py.detach(|| request.poll(&self.inner, SIGNAL_SLICE)).map_err(py_err)? {
                    RequestPoll::Reply(data, from) => return received(py, &data, &from).map(Some),
                    RequestPoll::NoReply => return Ok(None),
                    RequestPoll::Pending => py.check_signals()?,
                }
            }
        })
    }

    /// Sends the first try of a request and returns it, to be polled without blocking (for an
    /// event loop); the rules of `request`.
    #[pyo3(signature = (data, host, port, timeout, retries))]
    fn start_request(
        slf: &Bound<'_, PyPeer>,
        data: &[u8],
        host: String,
        port: u16,
        timeout: f64,
        retries: u32,
    ) -> PyResult<PyRequest> {
        guarded(|| {
            let py = slf.py();
            let to = resolve(py, &host, port)?;
            let timeout = seconds("timeout", timeout)?;
            let peer = slf.get();
            let request = py.detach(|| Request::start(&peer.inner, data, to, timeout, retries)).map_err(py_err)?;
            Ok(PyRequest { peer: slf.clone().unbind(), state: Mutex::new(request) })
        })
    }

    /// The socket's descriptor, to watch for readability (never to read from).
    fn fileno(&self) -> PyResult<i64> {
        guarded(|| {
            #[cfg(unix)]
            return self.inner.fileno().map(i64::from).map_err(py_err);
            #[cfg(not(unix))]
            Err(pyo3::exceptions::PyNotImplementedError::new_err("no descriptor to watch on this platform"))
        })
    }

    /// Closes the socket and wakes a thread waiting in `recv_from`; idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(|| {
            py.detach(|| self.inner.close());
            Ok(())
        })
    }

    #[getter]
    fn closed(&self) -> PyResult<bool> {
        guarded(|| Ok(self.inner.is_closed()))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guarded(|| self.stats_dict(py))
    }
}

impl PyPeer {
    fn stats_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.inner.stats();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("received", stats.received),
            ("sent", stats.sent),
            ("retries", stats.retries),
            ("truncated", stats.truncated),
            ("ignored", stats.ignored),
            ("send_errors", stats.send_errors),
            ("challenges", stats.challenges),
            ("refused", stats.refused),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}

/// A request in flight on a `Peer`, polled by an event loop.
#[pyclass(frozen, name = "Request", module = "chatudp._core")]
struct PyRequest {
    peer: Py<PyPeer>,
    state: Mutex<Request>,
}

#[pymethods]
impl PyRequest {
    /// Waits at most `timeout` seconds (0: just looks): the reply `(data, addr)`; while
    /// waiting, the seconds until the current try times out (the next poll then resends);
    /// `None` once every try timed out.
    #[pyo3(signature = (timeout=0.0))]
    fn poll<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        guarded(|| {
            let slice = seconds("timeout", timeout)?;
            let peer = &self.peer.get().inner;
            let (polled, left) = py.detach(|| {
                let mut request = self.state.lock();
                (request.poll(peer, slice), request.time_left())
            });
            match polled.map_err(py_err)? {
                RequestPoll::Reply(data, from) => Ok(received(py, &data, &from)?.into_pyobject(py)?.into_any()),
                RequestPoll::Pending => Ok(left.as_secs_f64().into_pyobject(py)?.into_any()),
                RequestPoll::NoReply => Ok(py.None().into_bound(py)),
            }
        })
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRequest>()?;
    m.add_class::<PyEchoServer>()?;
    m.add_class::<PyTimeServer>()?;
    m.add_class::<PyPeer>()?;
    Ok(())
}
