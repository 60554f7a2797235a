//! Python views of the bus: its counters as a dict, the other relays as a list of dicts.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::bus::{BusDrop, BusStatus};

/// `{"backend", "connected", "published", "received", "lost", ..., "dropped": {reason: n}}`.
pub(super) fn stats_dict<'py>(py: Python<'py>, status: &BusStatus) -> PyResult<Bound<'py, PyDict>> {
    let stats = status.stats();
    let dict = PyDict::new(py);
    dict.set_item("backend", stats.backend)?;
    dict.set_item("id", format!("{:016x}", status.id()))?;
    dict.set_item("connected", stats.connected)?;
    let counts = [
        ("published", stats.published),
        ("received", stats.received),
        ("lost", stats.lost),
        ("duplicates", stats.duplicates),
        ("foreign", stats.foreign),
        ("malformed", stats.malformed),
        ("reconnects", stats.reconnects),
        ("disconnects", stats.disconnects),
        ("slow_consumer", stats.slow_consumer),
    ];
    for (name, value) in counts {
        dict.set_item(name, value)?;
    }
    let dropped = PyDict::new(py);
    for reason in BusDrop::ALL {
        dropped.set_item(reason.name(), stats.dropped(reason))?;
    }
    dict.set_item("dropped", dropped)?;
    Ok(dict)
}

/// `[{"id": "hex", "clients": n, "last_seen": time.time()}, ...]`, by id.
pub(super) fn peers_list<'py>(py: Python<'py>, status: &BusStatus) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for peer in status.peers() {
        let dict = PyDict::new(py);
        dict.set_item("id", format!("{:016x}", peer.id))?;
        dict.set_item("clients", peer.clients)?;
        dict.set_item("last_seen", peer.last_seen)?;
        list.append(dict)?;
    }
    Ok(list)
}
