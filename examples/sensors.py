"""Mass collection from sensors: eight simulated sensors send numbered readings, a ``Collector``
hands them to Python in batches, and numpy views each batch as an array of fixed-size records
without copying a byte. Each sensor skips a few numbers on purpose, and the collector says
exactly how many readings were lost, from which sensor.

    python examples/sensors.py
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any, Dict, List

import numpy as np

from chatudp import Collector

# One reading: sequence number (4 bytes, big-endian, at offset 0), sensor number, value.
READING = np.dtype([("seq", ">u4"), ("sensor", ">u2"), ("value", ">f4")])
SENSORS = 8
PER_SENSOR = 2500
SKIPPED = {3, 500, 501}  # numbers every sensor "loses" on the way


def main() -> int:
    sums = np.zeros(SENSORS)
    counts = np.zeros(SENSORS, dtype=np.int64)
    lock = threading.Lock()

    def on_batch(batch: Any) -> None:
        readings = np.frombuffer(batch, dtype=READING)  # a view of the batch's buffer: no copy
        with lock:
            np.add.at(sums, readings["sensor"], readings["value"])
            np.add.at(counts, readings["sensor"], 1)

    with Collector("127.0.0.1", 0, batch=500, flush=0.02, seq=(0, 4, "big"), on_batch=on_batch) as collector:
        host, port = collector.addr[0], collector.addr[1]
        print(f"collecting on {host}:{port}")
        sockets: List[socket.socket] = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SENSORS)]
        for seq in range(PER_SENSOR):
            if seq in SKIPPED:
                continue
            for sensor, sock in enumerate(sockets):
                sock.sendto(struct.pack(">IHf", seq, sensor, sensor + seq / PER_SENSOR), (host, port))
            if seq % 100 == 99:
                # Paced, so a busy machine's socket buffer never overflows.
                while collector.stats["received"] < SENSORS * (seq + 1 - len(SKIPPED)) - 2000:
                    threading.Event().wait(0.001)
        expected = SENSORS * (PER_SENSOR - len(SKIPPED))
        while int(counts.sum()) < expected and collector.stats["dropped"] == 0:
            threading.Event().wait(0.01)
        stats = collector.stats
        sources: Dict[Any, Dict[str, int]] = collector.sources()
        for sock in sockets:
            sock.close()
    print(f"received {stats['received']} readings in {stats['batches']} batches")
    print(f"kernel drops {stats['kernel_drops']}, dropped {stats['dropped']}")
    lost = sorted({s["lost"] for s in sources.values()})
    print(f"{len(sources)} sensors, lost per sensor: {lost}")
    means = sums / np.maximum(counts, 1)
    print("mean reading per sensor: " + " ".join(f"{m:.2f}" for m in means))
    print("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
