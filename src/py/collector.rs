//! `chatudp._core.Collector` and its `Batch`: argument and result conversion only.

use std::ffi::{c_char, c_int, c_void};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use parking_lot::Mutex;
use pyo3::exceptions::{PyTimeoutError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PyTuple};
use pyo3::PyTypeInfo;

use super::{address, PyChatError, SIGNAL_SLICE};
use crate::collector::{
    Batch, Collector, CollectorConfig, FieldValue, Format, InfluxPoint, Metrics, SeqField, StatsdMetric, StatsdValue,
    Tags,
};

pyo3::import_exception!(chatudp.errors, ClosedError);

/// Batches the dispatcher takes at once at most.
const DISPATCH_BATCHES: usize = 16;

/// A running collector (the Rust half of `chatudp.Collector`).
#[pyclass(frozen, name = "Collector", module = "chatudp._core")]
struct PyCollector {
    inner: Collector,
    /// Sizes of the batches the dispatcher took last, for `discard_events`.
    last_taken: Mutex<Vec<usize>>,
}

fn parse_format(format: Option<&str>) -> PyResult<Option<Format>> {
    match format {
        None => Ok(None),
        Some("statsd") => Ok(Some(Format::Statsd)),
        Some("influx") => Ok(Some(Format::Influx)),
        Some(other) => Err(PyValueError::new_err(format!("format must be None, 'statsd' or 'influx', not {other:?}"))),
    }
}

fn parse_seq(seq: Option<(usize, usize, String)>) -> PyResult<Option<SeqField>> {
    let Some((offset, size, order)) = seq else { return Ok(None) };
    let big_endian = match order.as_str() {
        "big" => true,
        "little" => false,
        other => return Err(PyValueError::new_err(format!("seq byteorder must be 'big' or 'little', not {other:?}"))),
    };
    SeqField::new(offset, size, big_endian).map(Some).map_err(|e| PyValueError::new_err(format!("seq: {e}")))
}

/// Waits for the next batch, detached and in slices so Ctrl-C is seen. `Ok(None)` after
/// `timeout`; `Err(Disconnected)` once the socket threads are gone and the queue is empty.
fn wait_batch(
    py: Python<'_>,
    collector: &Collector,
    timeout: Option<f64>,
) -> PyResult<Result<Batch, RecvTimeoutError>> {
    let deadline = match timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => {
            return Err(PyValueError::new_err(format!("timeout must be None or a number of seconds >= 0, not {t}")))
        }
        Some(t) => Some(Instant::now() + Duration::from_secs_f64(t.min(1e9))),
        None => None,
    };
    loop {
        let slice = deadline.map_or(SIGNAL_SLICE, |d| d.saturating_duration_since(Instant::now()).min(SIGNAL_SLICE));
        match py.detach(|| collector.batches().recv_timeout(slice)) {
            Ok(batch) => return Ok(Ok(batch)),
            Err(RecvTimeoutError::Disconnected) => return Ok(Err(RecvTimeoutError::Disconnected)),
            Err(RecvTimeoutError::Timeout) => {
                py.check_signals()?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Err(RecvTimeoutError::Timeout));
                }
            }
        }
    }
}

#[pymethods]
impl PyCollector {
    #[new]
    #[pyo3(signature = (host, port, *, bufsize=2048, batch=1000, flush=0.05, workers=1, seq=None, format=None, rcvbuf=None, queue_size=crate::collector::DEFAULT_QUEUE_SIZE, max_sources=crate::collector::DEFAULT_MAX_SOURCES))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        bufsize: usize,
        batch: usize,
        flush: f64,
        workers: usize,
        seq: Option<(usize, usize, String)>,
        format: Option<&str>,
        rcvbuf: Option<usize>,
        queue_size: usize,
        max_sources: usize,
    ) -> PyResult<PyCollector> {
        let mut config = CollectorConfig::new(host, port);
        config.bufsize = bufsize;
        config.batch = batch;
        if !(flush.is_finite() && flush > 0.0 && flush <= 3600.0) {
            return Err(PyValueError::new_err(format!("flush must be > 0 and at most 3600 seconds, not {flush}")));
        }
        config.flush = Duration::from_secs_f64(flush);
        config.workers = workers;
        config.seq = parse_seq(seq)?;
        config.format = parse_format(format)?;
        config.socket.rcvbuf = rcvbuf.or(config.socket.rcvbuf);
        config.queue_size = queue_size;
        config.max_sources = max_sources;
        let inner = py.detach(|| Collector::start(config)).map_err(PyChatError)?;
        Ok(PyCollector { inner, last_taken: Mutex::new(Vec::new()) })
    }

    fn local_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        address(py, &self.inner.local_addr())
    }

    /// For the dispatcher: the next batches (a list); `None` once stopped and drained.
    fn next_events(&self, py: Python<'_>) -> PyResult<Option<Vec<PyBatch>>> {
        let first = match wait_batch(py, &self.inner, None)? {
            Ok(batch) => batch,
            Err(_) => return Ok(None),
        };
        let mut taken = vec![first];
        taken.extend(self.inner.batches().try_iter().take(DISPATCH_BATCHES - 1));
        *self.last_taken.lock() = taken.iter().map(Batch::len).collect();
        Ok(Some(taken.into_iter().map(PyBatch::new).collect()))
    }

    /// Drops what is queued and the last `unprocessed` batches taken by `next_events`, counting
    /// their datagrams in `dropped`; returns how many datagrams that was.
    #[pyo3(signature = (unprocessed=0))]
    fn discard_events(&self, unprocessed: usize) -> u64 {
        let last = self.last_taken.lock();
        let taken: usize = last.iter().rev().take(unprocessed).sum();
        self.inner.discard(taken as u64)
    }

    /// The next batch; `TimeoutError` after `timeout`, `ClosedError` once stopped and drained.
    #[pyo3(signature = (timeout=None))]
    fn recv_batch(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<PyBatch> {
        match wait_batch(py, &self.inner, timeout)? {
            Ok(batch) => Ok(PyBatch::new(batch)),
            Err(RecvTimeoutError::Timeout) => {
                Err(PyTimeoutError::new_err(format!("no batch within {} s", timeout.unwrap_or(0.0))))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(ClosedError::new_err("this Collector is stopped and every batch was read"))
            }
        }
    }

    /// A batch if one is queued, else `None`; `ClosedError` once stopped and drained.
    fn try_recv_batch(&self) -> PyResult<Option<PyBatch>> {
        match self.inner.batches().try_recv() {
            Ok(batch) => Ok(Some(PyBatch::new(batch))),
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(None),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                Err(ClosedError::new_err("this Collector is stopped and every batch was read"))
            }
        }
    }

    /// Blocks (detached) until a batch is queued, the collector ends, or `timeout` passes;
    /// takes nothing, so an abandoned wait loses nothing.
    fn wait_ready(&self, py: Python<'_>, timeout: f64) {
        let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 1e9));
        py.detach(|| self.inner.wait_ready(timeout));
    }

    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
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

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.inner.stats();
        let dict = PyDict::new(py);
        dict.set_item("received", stats.received)?;
        dict.set_item("batches", stats.batches)?;
        dict.set_item("truncated", stats.truncated)?;
        dict.set_item("kernel_drops", stats.kernel_drops)?;
        dict.set_item("dropped", stats.dropped)?;
        dict.set_item("parse_errors", stats.parse_errors)?;
        dict.set_item("short", stats.short)?;
        dict.set_item("evicted_sources", stats.evicted_sources)?;
        Ok(dict)
    }

    fn sources<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = py.detach(|| self.inner.sources());
        let dict = PyDict::new(py);
        for (addr, counts) in snapshot {
            let entry = PyDict::new(py);
            entry.set_item("received", counts.received)?;
            entry.set_item("lost", counts.lost)?;
            entry.set_item("reordered", counts.reordered)?;
            entry.set_item("duplicates", counts.duplicates)?;
            dict.set_item(address(py, &addr)?, entry)?;
        }
        Ok(dict)
    }
}

/// Datagrams received together (see `chatudp.Collector`). `memoryview(batch)` is every
/// payload back to back; `batch.offsets` has `len(batch) + 1` offsets into it.
#[pyclass(frozen, name = "Batch", module = "chatudp._core")]
pub struct PyBatch {
    inner: Batch,
    /// The buffer's shape and stride, at stable addresses for as long as the batch lives.
    shape: [ffi::Py_ssize_t; 1],
    strides: [ffi::Py_ssize_t; 1],
}

impl PyBatch {
    fn new(inner: Batch) -> PyBatch {
        let len = inner.data.len() as ffi::Py_ssize_t;
        PyBatch { inner, shape: [len], strides: [1] }
    }
}

fn tags_dict<'py>(py: Python<'py>, tags: &Tags) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in &tags.0 {
        dict.set_item(key, value)?;
    }
    Ok(dict)
}

fn statsd_tuple<'py>(py: Python<'py>, m: &StatsdMetric) -> PyResult<Bound<'py, PyTuple>> {
    let value = match &m.value {
        StatsdValue::Number(v) => v.into_pyobject(py)?.into_any(),
        StatsdValue::Text(t) => t.into_pyobject(py)?.into_any(),
    };
    PyTuple::new(
        py,
        [
            m.name.as_str().into_pyobject(py)?.into_any(),
            value,
            m.kind.into_pyobject(py)?.into_any(),
            m.sample_rate.into_pyobject(py)?.into_any(),
            tags_dict(py, &m.tags)?.into_any(),
        ],
    )
}

fn influx_tuple<'py>(py: Python<'py>, p: &InfluxPoint) -> PyResult<Bound<'py, PyTuple>> {
    let fields = PyDict::new(py);
    for (key, value) in &p.fields {
        match value {
            FieldValue::Float(v) => fields.set_item(key, v)?,
            FieldValue::Int(v) => fields.set_item(key, v)?,
            FieldValue::UInt(v) => fields.set_item(key, v)?,
            FieldValue::Bool(v) => fields.set_item(key, v)?,
            FieldValue::Str(v) => fields.set_item(key, v)?,
        }
    }
    PyTuple::new(
        py,
        [
            p.measurement.as_str().into_pyobject(py)?.into_any(),
            tags_dict(py, &p.tags)?.into_any(),
            fields.into_any(),
            p.timestamp.into_pyobject(py)?.into_any(),
        ],
    )
}

#[pymethods]
impl PyBatch {
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, index: isize) -> PyResult<Bound<'py, PyBytes>> {
        let len = self.inner.len() as isize;
        let i = if index < 0 { index + len } else { index };
        if !(0..len).contains(&i) {
            return Err(pyo3::exceptions::PyIndexError::new_err("batch index out of range"));
        }
        Ok(PyBytes::new(py, self.inner.payload(i as usize)))
    }

    /// `len(batch) + 1` offsets into the buffer: datagram `i` is `buf[offsets[i]:offsets[i + 1]]`.
    #[getter]
    fn offsets(&self) -> &[usize] {
        &self.inner.offsets
    }

    #[getter]
    fn payloads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, (0..self.inner.len()).map(|i| PyBytes::new(py, self.inner.payload(i))))
    }

    #[getter]
    fn addrs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // A source usually sends many datagrams of a batch: one tuple each, shared.
        let mut last: Option<(std::net::SocketAddr, Bound<'py, PyTuple>)> = None;
        let list = PyList::empty(py);
        for addr in &self.inner.addrs {
            let tuple = match &last {
                Some((seen, tuple)) if seen == addr => tuple.clone(),
                _ => address(py, addr)?,
            };
            list.append(&tuple)?;
            last = Some((*addr, tuple));
        }
        Ok(list)
    }

    #[getter]
    fn times(&self) -> &[f64] {
        &self.inner.times
    }

    /// Parsed metrics under `format`, in datagram order; `[]` without a format.
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        match &self.inner.metrics {
            Metrics::None => Ok(PyList::empty(py)),
            Metrics::Statsd(all) => {
                PyList::new(py, all.iter().map(|m| statsd_tuple(py, m)).collect::<PyResult<Vec<_>>>()?)
            }
            Metrics::Influx(all) => {
                PyList::new(py, all.iter().map(|p| influx_tuple(py, p)).collect::<PyResult<Vec<_>>>()?)
            }
        }
    }

    /// PEP 688: the same buffer as `memoryview(batch)`.
    #[pyo3(signature = (flags, /))]
    fn __buffer__<'py>(slf: &Bound<'py, Self>, flags: i32) -> PyResult<Bound<'py, PyMemoryView>> {
        let _ = flags; // a Batch is read-only whatever is asked; memoryview refuses writes
        PyMemoryView::from(slf.as_any())
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.data.len()
    }

    fn __repr__(&self) -> String {
        format!("<Batch of {} datagrams, {} bytes>", self.inner.len(), self.inner.data.len())
    }
}

// -- the buffer protocol -----------------------------------------------------------------------
//
// PyO3 offers `__getbuffer__` only for Python 3.11+ in abi3 builds, because `Py_buffer` joined
// the limited API then. The layout of `Py_buffer` and the place of `tp_as_buffer` in the type
// object have not changed since Python 3.0, and every heap type has its buffer slots inside its
// own type object; so the slot is filled in here, once, after checking that the type object
// looks as expected. If it does not, batches simply have no buffer (`memoryview` raises).

#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

type GetBuffer = unsafe extern "C" fn(*mut ffi::PyObject, *mut RawBuffer, c_int) -> c_int;

#[repr(C)]
struct BufferProcs {
    get: Option<GetBuffer>,
    release: Option<unsafe extern "C" fn(*mut ffi::PyObject, *mut RawBuffer)>,
}

/// `PyTypeObject` up to `tp_as_buffer`: the object header and 17 slots, all pointer-sized.
#[repr(C)]
struct TypePrefix {
    header: [usize; 3],
    name: *const c_char,
    basicsize: ffi::Py_ssize_t,
    slots: [usize; 15],
    as_buffer: *mut BufferProcs,
}

const PYBUF_WRITABLE: c_int = 0x0001;
const PYBUF_FORMAT: c_int = 0x0004;
const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;

unsafe extern "C" fn get_buffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int {
    // SAFETY: Python calls this slot with the GIL held and `obj` a live Batch.
    let py = unsafe { Python::assume_attached() };
    let fail = |message: &std::ffi::CStr| {
        // SAFETY: the GIL is held; both pointers are valid C strings / exception types.
        unsafe { ffi::PyErr_SetString(ffi::PyExc_BufferError, message.as_ptr()) };
        -1
    };
    if view.is_null() {
        return fail(c"a Batch needs a view to fill");
    }
    if flags & PYBUF_WRITABLE != 0 {
        return fail(c"a Batch is read-only; copy it (bytearray(batch)) to change it");
    }
    // SAFETY: `obj` is a borrowed reference to an instance of the Batch type.
    let bound = unsafe { Bound::from_borrowed_ptr(py, obj) };
    let Ok(batch) = bound.cast::<PyBatch>() else { return fail(c"not a Batch") };
    let batch = batch.get();
    // SAFETY: `view` is a live Py_buffer to fill; the pointers stored in it point into the
    // frozen batch, which the view keeps alive through `obj`.
    unsafe {
        let view = &mut *view;
        view.buf = batch.inner.data.as_ptr() as *mut c_void;
        ffi::Py_INCREF(obj);
        view.obj = obj;
        view.len = batch.shape[0];
        view.itemsize = 1;
        view.readonly = 1;
        view.ndim = 1;
        view.format = if flags & PYBUF_FORMAT != 0 { c"B".as_ptr() as *mut c_char } else { std::ptr::null_mut() };
        view.shape = if flags & PYBUF_ND == PYBUF_ND { batch.shape.as_ptr() as *mut _ } else { std::ptr::null_mut() };
        view.strides = if flags & PYBUF_STRIDES == PYBUF_STRIDES {
            batch.strides.as_ptr() as *mut _
        } else {
            std::ptr::null_mut()
        };
        view.suboffsets = std::ptr::null_mut();
        view.internal = std::ptr::null_mut();
    }
    0
}

/// Gives the Batch type its buffer slot; returns whether it could.
fn install_buffer(py: Python<'_>) -> bool {
    let ty = PyBatch::type_object(py);
    let raw = ty.as_type_ptr() as *mut TypePrefix;
    // SAFETY: a type object starts with this prefix on every CPython 3.x (checked against its
    // name and size before writing); heap types keep their buffer slots inside themselves.
    unsafe {
        let prefix = &mut *raw;
        let name_ok = !prefix.name.is_null() && std::ffi::CStr::from_ptr(prefix.name).to_bytes().ends_with(b"Batch");
        let size_ok = prefix.basicsize as usize >= std::mem::size_of::<PyBatch>();
        let buffer_inside = {
            let start = raw as usize;
            let slot = prefix.as_buffer as usize;
            slot > start && slot < start + 4096
        };
        if !(name_ok && size_ok && buffer_inside) {
            return false;
        }
        (*prefix.as_buffer).get = Some(get_buffer);
        (*prefix.as_buffer).release = None;
        ffi::PyType_Modified(raw.cast());
    }
    true
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCollector>()?;
    m.add_class::<PyBatch>()?;
    m.add("BATCH_BUFFER", install_buffer(m.py()))?;
    m.add("REUSEPORT", crate::reuseport::supported())?;
    Ok(())
}
