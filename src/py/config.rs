//! The endpoints' configs as Python objects: built, and so checked, when the Python object is
//! constructed, then handed to the socket thread at `start()`. The checks themselves live in
//! `crate::config`; this module only translates Python values into the Rust configs.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use crate::bus::BusConfig;
use crate::config::{
    self, IntRange, DEFAULT_BACKLOG, DEFAULT_BUFSIZE, DEFAULT_CHAT_PORT, DEFAULT_HOST, DEFAULT_INTERVAL,
    DEFAULT_MAX_CLIENTS, DEFAULT_QUEUE_SIZE,
};
use crate::config::{PeerConfig, ServiceConfig};
use crate::error::ChatError;
use crate::limits::{Network, Rate};
use crate::net::SocketOptions;
use crate::{ClientConfig, ServerConfig};

pyo3::import_exception!(chatudp.errors, PortError);

fn value_error(error: ChatError) -> PyErr {
    PyValueError::new_err(error.to_string())
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// A Python `int` (not a `bool`, not a `float`) for `name`.
fn strict_int(name: &str, value: &Bound<'_, PyAny>) -> PyResult<i64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!("{name} must be an int, not {}", type_name(value))));
    }
    // Beyond i64 is out of every range: say so as the range does.
    Ok(value.extract::<i64>().unwrap_or(i64::MAX))
}

/// An argument as Python gave it; `None` stands for the default.
type Arg<'py> = Bound<'py, PyAny>;

/// An integer parameter in its range, or `default` for `None`.
fn int(range: IntRange, value: Option<Arg<'_>>, default: usize) -> PyResult<usize> {
    match value {
        None => Ok(default),
        Some(value) => range.check(strict_int(range.name, &value)?).map_err(value_error).map(|v| v as usize),
    }
}

/// A number of seconds (an `int` or a `float`, not a `bool`) for `name`, or `default` for `None`.
fn seconds(name: &str, value: Option<Arg<'_>>, default: f64) -> PyResult<f64> {
    let Some(value) = value else { return Ok(default) };
    if value.is_instance_of::<PyBool>() || !(value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>()) {
        return Err(PyTypeError::new_err(format!("{name} must be a number of seconds, not {}", type_name(&value))));
    }
    value.extract::<f64>()
}

/// A port, refused with `PortError` (a `ValueError` and the `OverflowError` of `socket.bind`).
fn port(name: &'static str, value: &Arg<'_>) -> PyResult<u16> {
    let range = IntRange { name, ..config::PORT };
    range.check(strict_int(name, value)?).map(|v| v as u16).map_err(|e| PortError::new_err(e.to_string()))
}

/// A port, or `default` for `None`.
fn port_or(name: &'static str, value: Option<Arg<'_>>, default: u16) -> PyResult<u16> {
    value.map_or(Ok(default), |value| port(name, &value))
}

fn socket(defaults: SocketOptions, rcvbuf: Option<Arg<'_>>, sndbuf: Option<Arg<'_>>) -> PyResult<SocketOptions> {
    Ok(SocketOptions {
        rcvbuf: rcvbuf.map(|v| int(config::RCVBUF, Some(v), 0)).transpose()?.or(defaults.rcvbuf),
        sndbuf: sndbuf.map(|v| int(config::SNDBUF, Some(v), 0)).transpose()?.or(defaults.sndbuf),
    })
}

/// A `str` or an iterable of them; with `any_str`, of any values whose `str()` is taken
/// (`ipaddress` networks, say).
fn one_or_many(name: &str, accepted: &str, value: &Bound<'_, PyAny>, any_str: bool) -> PyResult<Vec<String>> {
    let refused = || {
        let shown = value.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string());
        PyTypeError::new_err(format!("{name} must be {accepted}, not {shown}"))
    };
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(vec![text.extract::<String>()?]);
    }
    let items = value.try_iter().map_err(|_| refused())?;
    items
        .map(|item| {
            let item = item?;
            match item.cast::<PyString>() {
                Ok(text) => text.extract::<String>(),
                Err(_) if any_str => item.str()?.extract::<String>(),
                Err(_) => Err(refused()),
            }
        })
        .collect()
}

/// `_core.ServerConfig`: every setting of `chatudp.ChatUdpServer`, checked once.
#[pyclass(frozen, name = "ServerConfig", module = "chatudp._core")]
pub(crate) struct PyServerConfig {
    pub(crate) inner: ServerConfig,
}

#[pymethods]
impl PyServerConfig {
    #[new]
    #[pyo3(signature = (ip=String::from(DEFAULT_HOST), port=None, interval=None, *, bufsize=None, expiry_grace=None, drop_unreachable=true, max_clients=None, rate=None, allow=None, validate=false, secret=None, queue_size=None, backlog=None, rcvbuf=None, sndbuf=None, workers=None, bus=None, room=String::from("chatudp")))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        ip: String,
        port: Option<Arg<'_>>,
        interval: Option<Arg<'_>>,
        bufsize: Option<Arg<'_>>,
        expiry_grace: Option<Arg<'_>>,
        drop_unreachable: bool,
        max_clients: Option<Arg<'_>>,
        rate: Option<(f64, f64)>,
        allow: Option<Arg<'_>>,
        validate: bool,
        secret: Option<Vec<u8>>,
        queue_size: Option<Arg<'_>>,
        backlog: Option<Arg<'_>>,
        rcvbuf: Option<Arg<'_>>,
        sndbuf: Option<Arg<'_>>,
        workers: Option<Arg<'_>>,
        bus: Option<Arg<'_>>,
        room: String,
    ) -> PyResult<PyServerConfig> {
        let mut config = ServerConfig::new(
            ip,
            port_or("port", port, DEFAULT_CHAT_PORT as u16)?,
            seconds("interval", interval, DEFAULT_INTERVAL)?,
        );
        config.expiry_grace = seconds("expiry_grace", expiry_grace, config.expiry_grace)?;
        config.bufsize = int(config::BUFSIZE, bufsize, DEFAULT_BUFSIZE)?;
        config.queue_size = int(config::QUEUE_SIZE, queue_size, DEFAULT_QUEUE_SIZE)?;
        config.backlog = int(config::BACKLOG, backlog, DEFAULT_BACKLOG)?;
        config.socket = socket(config.socket, rcvbuf, sndbuf)?;
        config.drop_unreachable = drop_unreachable;
        config.max_clients = int(config::MAX_CLIENTS, max_clients, DEFAULT_MAX_CLIENTS)?;
        config.rate = rate.map(|(per_second, burst)| Rate::new(per_second, burst)).transpose().map_err(value_error)?;
        if let Some(allow) = allow {
            let accepted = "None, a network like '10.0.0.0/8' or a list of them";
            let networks = one_or_many("allow", accepted, &allow, true)?;
            config.allow = networks.iter().map(|n| Network::parse(n)).collect::<Result<_, _>>().map_err(value_error)?;
        }
        config.validate = validate;
        config.secret = secret;
        config.workers = int(config::WORKERS, workers, 1)?;
        if let Some(bus) = bus {
            let urls = one_or_many("bus", "a URL string or a list of URL strings", &bus, false)?;
            config.bus = Some(BusConfig::new(urls, room));
        }
        config.validate().map_err(value_error)?;
        Ok(PyServerConfig { inner: config })
    }

    #[getter]
    fn backlog(&self) -> usize {
        self.inner.backlog
    }
}

/// `_core.ClientConfig`: every setting of `chatudp.ChatUdpClient`, checked once.
#[pyclass(frozen, name = "ClientConfig", module = "chatudp._core")]
pub(crate) struct PyClientConfig {
    pub(crate) inner: ClientConfig,
}

#[pymethods]
impl PyClientConfig {
    #[new]
    #[pyo3(signature = (rip=String::from(DEFAULT_HOST), rport=None, interval=None, *, bufsize=None, queue_size=None, backlog=None, rcvbuf=None, sndbuf=None, secret=None, announce=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rip: String,
        rport: Option<Arg<'_>>,
        interval: Option<Arg<'_>>,
        bufsize: Option<Arg<'_>>,
        queue_size: Option<Arg<'_>>,
        backlog: Option<Arg<'_>>,
        rcvbuf: Option<Arg<'_>>,
        sndbuf: Option<Arg<'_>>,
        secret: Option<Vec<u8>>,
        announce: bool,
    ) -> PyResult<PyClientConfig> {
        let mut config = ClientConfig::new(
            rip,
            port_or("rport", rport, DEFAULT_CHAT_PORT as u16)?,
            seconds("interval", interval, DEFAULT_INTERVAL)?,
        );
        config.bufsize = int(config::BUFSIZE, bufsize, DEFAULT_BUFSIZE)?;
        config.queue_size = int(config::QUEUE_SIZE, queue_size, DEFAULT_QUEUE_SIZE)?;
        config.backlog = int(config::BACKLOG, backlog, DEFAULT_BACKLOG)?;
        config.socket = socket(config.socket, rcvbuf, sndbuf)?;
        config.secret = secret;
        config.announce = announce;
        config.validate().map_err(value_error)?;
        Ok(PyClientConfig { inner: config })
    }

    #[getter]
    fn backlog(&self) -> usize {
        self.inner.backlog
    }
}

/// Socket receive buffer the echo and time servers ask for by default (the kernel caps it at
/// `rmem_max`), so a burst waits in the kernel instead of being dropped there.
const SERVICE_RCVBUF: usize = 4 << 20;

/// The tutorial's echo and time servers listen on port 9000.
pub(crate) const DEFAULT_SERVICE_PORT: u16 = 9000;

/// `_core.ServiceConfig`: every setting of `chatudp.EchoServer` and `TimeServer`.
#[pyclass(frozen, name = "ServiceConfig", module = "chatudp._core")]
pub(crate) struct PyServiceConfig {
    pub(crate) inner: ServiceConfig,
}

#[pymethods]
impl PyServiceConfig {
    /// `queue_size`: the events that may wait for `on_request` (used when it is set).
    #[new]
    #[pyo3(signature = (ip=String::from(DEFAULT_HOST), port=None, *, bufsize=None, queue_size=None, rcvbuf=None, sndbuf=None, validate=false))]
    fn new(
        ip: String,
        port: Option<Arg<'_>>,
        bufsize: Option<Arg<'_>>,
        queue_size: Option<Arg<'_>>,
        rcvbuf: Option<Arg<'_>>,
        sndbuf: Option<Arg<'_>>,
        validate: bool,
    ) -> PyResult<PyServiceConfig> {
        let port = port_or("port", port, DEFAULT_SERVICE_PORT)?;
        let mut config = ServiceConfig::new(ip, port);
        config.bufsize = int(config::BUFSIZE, bufsize, DEFAULT_BUFSIZE)?;
        config.events = Some(int(config::QUEUE_SIZE, queue_size, DEFAULT_QUEUE_SIZE)?);
        config.socket = socket(SocketOptions { rcvbuf: Some(SERVICE_RCVBUF), sndbuf: None }, rcvbuf, sndbuf)?;
        config.validate = validate;
        config.validate().map_err(value_error)?;
        Ok(PyServiceConfig { inner: config })
    }
}

/// `_core.PeerConfig`: the socket of `chatudp.EchoClient`, `TimeClient` (toward `rip:rport`,
/// with `timeout` and `retries`) and `QQPeer` (bound to `bind`).
#[pyclass(frozen, name = "PeerConfig", module = "chatudp._core")]
pub(crate) struct PyPeerConfig {
    pub(crate) inner: PeerConfig,
}

#[pymethods]
impl PyPeerConfig {
    #[new]
    #[pyo3(signature = (rip=String::from(DEFAULT_HOST), rport=None, *, timeout=None, retries=None, bufsize=None, rcvbuf=None, sndbuf=None))]
    fn new(
        rip: String,
        rport: Option<Arg<'_>>,
        timeout: Option<Arg<'_>>,
        retries: Option<Arg<'_>>,
        bufsize: Option<Arg<'_>>,
        rcvbuf: Option<Arg<'_>>,
        sndbuf: Option<Arg<'_>>,
    ) -> PyResult<PyPeerConfig> {
        let rport = port_or("rport", rport, DEFAULT_SERVICE_PORT)?;
        let mut config = PeerConfig::new(rip, rport);
        // Infinity waits as long as the core can count (no limit), as for every other wait.
        config.timeout = match seconds("timeout", timeout, config::DEFAULT_TIMEOUT)? {
            f64::INFINITY => config::TIMEOUT.max,
            finite_or_nan => finite_or_nan,
        };
        config.retries = int(config::RETRIES, retries, config::DEFAULT_RETRIES as usize)? as u32;
        config.bufsize = int(config::BUFSIZE, bufsize, config::MAX_DATAGRAM)?;
        Self::finish(config, rcvbuf, sndbuf)
    }

    /// A socket bound to `bind`, a `(host, port)` tuple as `socket.bind` takes it.
    #[staticmethod]
    #[pyo3(signature = (bind, *, bufsize=None, rcvbuf=None, sndbuf=None))]
    fn bound(
        bind: Arg<'_>,
        bufsize: Option<Arg<'_>>,
        rcvbuf: Option<Arg<'_>>,
        sndbuf: Option<Arg<'_>>,
    ) -> PyResult<PyPeerConfig> {
        let (host, port) = address("bind", &bind)?;
        let mut config = PeerConfig::new(host, port);
        config.bufsize = int(config::BUFSIZE, bufsize, DEFAULT_BUFSIZE)?;
        Self::finish(config, rcvbuf, sndbuf)
    }
}

impl PyPeerConfig {
    fn finish(mut config: PeerConfig, rcvbuf: Option<Arg<'_>>, sndbuf: Option<Arg<'_>>) -> PyResult<PyPeerConfig> {
        config.socket = socket(config.socket, rcvbuf, sndbuf)?;
        config.validate().map_err(value_error)?;
        Ok(PyPeerConfig { inner: config })
    }
}

/// A `(host, port)` pair (or an IPv6 4-tuple, whose flow info and scope id are not used).
pub(crate) fn address(name: &'static str, value: &Arg<'_>) -> PyResult<(String, u16)> {
    let refused = || {
        let shown = value.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string());
        PyTypeError::new_err(format!("{name} must be a (host, port) tuple such as ('', 8081), not {shown}"))
    };
    let tuple = value.cast::<pyo3::types::PyTuple>().map_err(|_| refused())?;
    if tuple.len() != 2 && tuple.len() != 4 {
        return Err(refused());
    }
    let host = tuple.get_item(0)?;
    let host = host.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name}[0] must be a str (an IP address or a host name), not {}",
            type_name(&host)
        ))
    })?;
    let port_name = if name == "bind" { "bind[1]" } else { "addr[1]" };
    Ok((host.extract::<String>()?, port(port_name, &tuple.get_item(1)?)?))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServerConfig>()?;
    m.add_class::<PyClientConfig>()?;
    m.add_class::<PyServiceConfig>()?;
    m.add_class::<PyPeerConfig>()?;
    m.add("DEFAULT_SERVICE_PORT", DEFAULT_SERVICE_PORT)?;
    m.add("DEFAULT_QUEUE_SIZE", DEFAULT_QUEUE_SIZE)?;
    m.add("DEFAULT_BACKLOG", DEFAULT_BACKLOG)?;
    m.add("DEFAULT_MAX_CLIENTS", DEFAULT_MAX_CLIENTS)?;
    m.add("DEFAULT_BUFSIZE", DEFAULT_BUFSIZE)?;
    m.add("DEFAULT_HOST", DEFAULT_HOST)?;
    m.add("DEFAULT_CHAT_PORT", DEFAULT_CHAT_PORT)?;
    m.add("DEFAULT_INTERVAL", DEFAULT_INTERVAL)?;
    Ok(())
}
