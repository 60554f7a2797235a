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
fn port(name: &'static str, value: Option<Arg<'_>>) -> PyResult<u16> {
    let Some(value) = value else { return Ok(DEFAULT_CHAT_PORT as u16) };
    let range = IntRange { name, ..config::PORT };
    range.check(strict_int(name, &value)?).map(|v| v as u16).map_err(|e| PortError::new_err(e.to_string()))
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
        let mut config =
            ServerConfig::new(ip, self::port("port", port)?, seconds("interval", interval, DEFAULT_INTERVAL)?);
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
    #[pyo3(signature = (rip=String::from(DEFAULT_HOST), rport=None, interval=None, *, bufsize=None, queue_size=None, backlog=None, rcvbuf=None, sndbuf=None, secret=None))]
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
    ) -> PyResult<PyClientConfig> {
        let mut config =
            ClientConfig::new(rip, port("rport", rport)?, seconds("interval", interval, DEFAULT_INTERVAL)?);
        config.bufsize = int(config::BUFSIZE, bufsize, DEFAULT_BUFSIZE)?;
        config.queue_size = int(config::QUEUE_SIZE, queue_size, DEFAULT_QUEUE_SIZE)?;
        config.backlog = int(config::BACKLOG, backlog, DEFAULT_BACKLOG)?;
        config.socket = socket(config.socket, rcvbuf, sndbuf)?;
        config.secret = secret;
        config.validate().map_err(value_error)?;
        Ok(PyClientConfig { inner: config })
    }

    #[getter]
    fn backlog(&self) -> usize {
        self.inner.backlog
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServerConfig>()?;
    m.add_class::<PyClientConfig>()?;
    m.add("DEFAULT_QUEUE_SIZE", DEFAULT_QUEUE_SIZE)?;
    m.add("DEFAULT_BACKLOG", DEFAULT_BACKLOG)?;
    m.add("DEFAULT_MAX_CLIENTS", DEFAULT_MAX_CLIENTS)?;
    m.add("DEFAULT_BUFSIZE", DEFAULT_BUFSIZE)?;
    m.add("DEFAULT_HOST", DEFAULT_HOST)?;
    m.add("DEFAULT_CHAT_PORT", DEFAULT_CHAT_PORT)?;
    m.add("DEFAULT_INTERVAL", DEFAULT_INTERVAL)?;
    Ok(())
}
