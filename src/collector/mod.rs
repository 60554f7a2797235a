//! Mass collection: datagrams taken in at the kernel's rate by `workers` socket threads and
//! handed to the owner in batches, every loss counted.
//!
//! A batch is handed over when it holds `batch` datagrams, or `flush` after its first one,
//! whichever comes first. Batches wait in one bounded queue (`queue_size` batches); when it is
//! full the new batch is dropped and its datagrams counted in `dropped`. What the kernel drops
//! because the socket buffer was full is `kernel_drops`.

pub mod influx;
pub mod seq;
pub mod statsd;
mod text;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};
use socket2::Socket;

use crate::error::{ChatError, Result};
use crate::net::{self, local_addr, resolve, RecvBatch, SocketOptions, Waiter};
use crate::worker::{Control, Worker};

pub use influx::{FieldValue, InfluxPoint};
pub use seq::{SeqField, SourceCounts};
pub use statsd::{StatsdMetric, StatsdValue};
pub use text::Tags;

/// Datagrams read per system call at most.
const SLOTS: usize = 64;
/// How long an idle socket thread sleeps between looks at its stop flag (a stop wakes it anyway).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// What the datagrams hold, when the collector parses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Statsd,
    Influx,
}

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub host: String,
    pub port: u16,
    pub bufsize: usize,
    pub batch: usize,
    pub flush: Duration,
    pub workers: usize,
    pub seq: Option<SeqField>,
    pub format: Option<Format>,
    pub socket: SocketOptions,
    pub queue_size: usize,
    pub max_sources: usize,
}

pub const DEFAULT_QUEUE_SIZE: usize = 1024;
pub const DEFAULT_MAX_SOURCES: usize = 65536;

impl CollectorConfig {
    pub fn new(host: impl Into<String>, port: u16) -> CollectorConfig {
        CollectorConfig {
            host: host.into(),
            port,
            bufsize: 2048,
            batch: 1000,
            flush: Duration::from_millis(50),
            workers: 1,
            seq: None,
            format: None,
            socket: SocketOptions { rcvbuf: Some(4 << 20), sndbuf: None },
            queue_size: DEFAULT_QUEUE_SIZE,
            max_sources: DEFAULT_MAX_SOURCES,
        }
    }

    fn check(&self) -> Result<()> {
        let invalid = |msg: String| Err(ChatError::InvalidArgument(msg));
        if !(1..=crate::protocol::MAX_DATAGRAM).contains(&self.bufsize) {
            return invalid(format!(
                "bufsize must be 1..{} bytes, not {}",
                crate::protocol::MAX_DATAGRAM,
                self.bufsize
            ));
        }
        if !(1..=1_000_000).contains(&self.batch) {
            return invalid(format!("batch must be 1..1000000 datagrams, not {}", self.batch));
        }
        if self.flush.is_zero() || self.flush > Duration::from_secs(3600) {
            return invalid(format!("flush must be > 0 and at most 3600 seconds, not {:?}", self.flush));
        }
        if !(1..=1024).contains(&self.workers) {
            return invalid(format!("workers must be 1..1024, not {}", self.workers));
        }
        if self.queue_size == 0 || self.max_sources == 0 {
            return invalid("queue_size and max_sources must be >= 1".to_owned());
        }
        Ok(())
    }
}

/// Metrics parsed from the datagrams of a batch, in datagram order.
#[derive(Debug, Clone, PartialEq)]
pub enum Metrics {
    None,
    Statsd(Vec<StatsdMetric>),
    Influx(Vec<InfluxPoint>),
}

/// Datagrams handed over together: payloads back to back in `data`, datagram `i` being
/// `data[offsets[i]..offsets[i + 1]]`.
#[derive(Debug)]
pub struct Batch {
    pub data: Vec<u8>,
    pub offsets: Vec<usize>,
    pub addrs: Vec<SocketAddr>,
    /// Receive time of each datagram, wall-clock seconds (the kernel's stamp where there is one).
    pub times: Vec<f64>,
    pub metrics: Metrics,
}

impl Batch {
    fn new(format: Option<Format>, capacity: usize) -> Batch {
        let mut offsets = Vec::with_capacity(capacity + 1);
        offsets.push(0);
        Batch {
            data: Vec::new(),
            offsets,
            addrs: Vec::with_capacity(capacity),
            times: Vec::with_capacity(capacity),
            metrics: match format {
                None => Metrics::None,
                Some(Format::Statsd) => Metrics::Statsd(Vec::new()),
                Some(Format::Influx) => Metrics::Influx(Vec::new()),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn payload(&self, index: usize) -> &[u8] {
        &self.data[self.offsets[index]..self.offsets[index + 1]]
    }

    /// Appends one datagram; returns how many of its lines were malformed.
    fn push(&mut self, payload: &[u8], from: SocketAddr, time: f64) -> u64 {
        self.data.extend_from_slice(payload);
        self.offsets.push(self.data.len());
        self.addrs.push(from);
        self.times.push(time);
        match &mut self.metrics {
            Metrics::None => 0,
            Metrics::Statsd(out) => statsd::parse(payload, out),
            Metrics::Influx(out) => influx::parse(payload, out),
        }
    }
}

/// The collector's counters.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    batches: AtomicU64,
    truncated: AtomicU64,
    dropped: AtomicU64,
    parse_errors: AtomicU64,
    short: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectorStats {
    pub received: u64,
    /// Batches handed over (queued for the owner or dropped).
    pub batches: u64,
    pub truncated: u64,
    /// Datagrams the kernel dropped because the socket buffer was full; `None` where the
    /// platform does not tell.
    pub kernel_drops: Option<u64>,
    /// Datagrams in batches dropped because the queue to the owner was full.
    pub dropped: u64,
    /// Malformed lines under `format`.
    pub parse_errors: u64,
    /// Datagrams too short to hold the sequence number.
    pub short: u64,
    /// Sources forgotten because the sources table was full.
    pub evicted_sources: u64,
}

struct Shared {
    counters: Counters,
    tables: Vec<Mutex<seq::SourceTable>>,
    /// Per socket: the live socket (until stop), and the last drop count seen.
    sockets: Vec<Mutex<Option<Arc<Socket>>>>,
    kernel_drops: Vec<AtomicU64>,
    drops_known: bool,
    /// Signalled when a batch is queued or a socket thread ends, for `wait_ready`.
    ready: Mutex<()>,
    ready_signal: Condvar,
    live_threads: AtomicUsize,
}

/// A running collector.
pub struct Collector {
    workers: Vec<Worker>,
    batches: Receiver<Batch>,
    shared: Arc<Shared>,
    local: SocketAddr,
}

impl Collector {
    /// Binds `workers` sockets (with `SO_REUSEPORT` when more than one) and starts a thread on each.
    pub fn start(config: CollectorConfig) -> Result<Collector> {
        config.check()?;
        let addr = resolve(&config.host, config.port)?;
        let sockets: Vec<Arc<Socket>> =
            crate::reuseport::bind_group(addr, config.workers, config.socket)?.into_iter().map(Arc::new).collect();
        let local = local_addr(&sockets[0])?;
        let mut drops_known = true;
        for socket in &sockets {
            drops_known &= net::enable_ancillary(socket);
        }
        let per_table = config.max_sources.div_ceil(sockets.len()).max(1);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            tables: sockets.iter().map(|_| Mutex::new(seq::SourceTable::new(per_table))).collect(),
            sockets: sockets.iter().map(|s| Mutex::new(Some(Arc::clone(s)))).collect(),
            kernel_drops: sockets.iter().map(|_| AtomicU64::new(0)).collect(),
            drops_known,
            ready: Mutex::new(()),
            ready_signal: Condvar::new(),
            live_threads: AtomicUsize::new(sockets.len()),
        });
        let (sender, batches) = crossbeam_channel::bounded(config.queue_size);
        let mut workers = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let (waiter, waker) = Waiter::new(&socket)?;
            let mut thread = SocketThread {
                index,
                socket,
                waiter,
                config: config.clone(),
                shared: Arc::clone(&shared),
                sender: sender.clone(),
            };
            let name = format!("chatudp-collector-{index}");
            workers.push(Worker::spawn(&name, waker, move |control| thread.run(control))?);
        }
        Ok(Collector { workers, batches, shared, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The queue of batches for the owner; it closes once every socket thread has ended.
    pub fn batches(&self) -> &Receiver<Batch> {
        &self.batches
    }

    /// Blocks until a batch is queued, every socket thread has ended, or `timeout` passes.
    /// Takes nothing: a waiter that gives up loses nothing.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.ready.lock();
        while self.batches.is_empty() && self.shared.live_threads.load(Relaxed) > 0 {
            if self.shared.ready_signal.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
    }

    /// Drops every batch still queued, counting its datagrams in `dropped`, plus `unprocessed`
    /// datagrams already taken; returns how many datagrams were dropped.
    pub fn discard(&self, unprocessed: u64) -> u64 {
        let queued: u64 = self.batches.try_iter().map(|b| b.len() as u64).sum();
        self.shared.counters.dropped.fetch_add(queued + unprocessed, Relaxed);
        queued + unprocessed
    }

    /// Ends every socket thread (each first reads what its socket holds and hands over its
    /// last batch), closes the sockets, and joins. Prompt and idempotent.
    pub fn stop(&self) {
        for worker in &self.workers {
            worker.stop();
        }
    }

    pub fn is_running(&self) -> bool {
        self.workers.iter().all(Worker::is_running)
    }

    pub fn failure(&self) -> Option<String> {
        self.workers.iter().find_map(Worker::failure)
    }

    #[doc(hidden)]
    pub fn inject_panic(&self) {
        self.workers[0].inject_panic();
    }

    pub fn stats(&self) -> CollectorStats {
        let c = &self.shared.counters;
        let mut kernel_drops = 0;
        for (index, socket) in self.shared.sockets.iter().enumerate() {
            if let Some(socket) = socket.lock().as_ref() {
                if let Some(now) = net::kernel_drops_now(socket) {
                    self.shared.kernel_drops[index].fetch_max(now, Relaxed);
                }
            }
            kernel_drops += self.shared.kernel_drops[index].load(Relaxed);
        }
        CollectorStats {
            received: c.received.load(Relaxed),
            batches: c.batches.load(Relaxed),
            truncated: c.truncated.load(Relaxed),
            kernel_drops: self.shared.drops_known.then_some(kernel_drops),
            dropped: c.dropped.load(Relaxed),
            parse_errors: c.parse_errors.load(Relaxed),
            short: c.short.load(Relaxed),
            evicted_sources: self.shared.tables.iter().map(|t| t.lock().evictions).sum(),
        }
    }

    /// Counts per source (at most `max_sources` of them, the most recently heard).
    pub fn sources(&self) -> Vec<(SocketAddr, SourceCounts)> {
        let mut all = Vec::new();
        for table in &self.shared.tables {
            all.extend(table.lock().snapshot());
        }
        all
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

struct SocketThread {
    index: usize,
    socket: Arc<Socket>,
    waiter: Waiter,
    config: CollectorConfig,
    shared: Arc<Shared>,
    sender: Sender<Batch>,
}

impl SocketThread {
    fn run(&mut self, control: &Control) {
        let mut rx = RecvBatch::new(SLOTS.min(self.config.batch), self.config.bufsize);
        let mut batch = self.new_batch();
        let mut deadline: Option<Instant> = None;
        loop {
            if control.is_stopping() {
                // What the kernel holds now was received: take it, then hand everything over.
                while self.read(&mut rx, &mut batch, &mut deadline) > 0 {}
                self.hand_over(&mut batch, &mut deadline);
                break;
            }
            let wait = deadline.map_or(IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()));
            // A failing wait (never seen in practice) must not become a busy loop.
            let readable = self.waiter.wait(wait).unwrap_or_else(|_| {
                std::thread::sleep(Duration::from_millis(10));
                false
            });
            if readable {
                // Bounded: a flood must not keep a full batch from its deadline.
                for _ in 0..64 {
                    if self.read(&mut rx, &mut batch, &mut deadline) == 0 {
                        break;
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.hand_over(&mut batch, &mut deadline);
            }
        }
        self.finish();
    }

    fn new_batch(&self) -> Batch {
        Batch::new(self.config.format, self.config.batch.min(4096))
    }

    /// One receive call, never past the end of the batch being built; returns how many
    /// datagrams were read.
    fn read(&mut self, rx: &mut RecvBatch, batch: &mut Batch, deadline: &mut Option<Instant>) -> usize {
        let room = self.config.batch - batch.len();
        let n = match rx.recv_max(&self.socket, room) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        if n == 0 {
            return 0;
        }
        if deadline.is_none() {
            *deadline = Some(Instant::now() + self.config.flush);
        }
        let counters = &self.shared.counters;
        let mut parse_errors = 0;
        let mut truncated = 0;
        let mut short = 0;
        {
            let mut table = self.shared.tables[self.index].lock();
            let space = self.config.seq.as_ref().map(seq::Space::new);
            for i in 0..n {
                let d = rx.get(i);
                truncated += u64::from(d.truncated);
                parse_errors += batch.push(d.data, d.from, d.time);
                let source = table.get(d.from);
                source.received += 1;
                if let (Some(field), Some(space)) = (&self.config.seq, &space) {
                    match field.read(d.data) {
                        Some(number) => match &mut source.seq {
                            Some(state) => state.update(number, space),
                            None => source.seq = Some(seq::SourceSeq::new(number)),
                        },
                        None => short += 1,
                    }
                }
            }
        }
        counters.received.fetch_add(n as u64, Relaxed);
        counters.truncated.fetch_add(truncated, Relaxed);
        counters.parse_errors.fetch_add(parse_errors, Relaxed);
        counters.short.fetch_add(short, Relaxed);
        if let Some(drops) = rx.kernel_drops {
            self.shared.kernel_drops[self.index].fetch_max(drops, Relaxed);
        }
        if batch.len() == self.config.batch {
            self.hand_over(batch, deadline);
        }
        n
    }

    fn hand_over(&self, batch: &mut Batch, deadline: &mut Option<Instant>) {
        *deadline = None;
        if batch.is_empty() {
            return;
        }
        let full = std::mem::replace(batch, self.new_batch());
        let counters = &self.shared.counters;
        counters.batches.fetch_add(1, Relaxed);
        match self.sender.try_send(full) {
            Ok(()) => self.signal_ready(),
            Err(TrySendError::Full(lost) | TrySendError::Disconnected(lost)) => {
                counters.dropped.fetch_add(lost.len() as u64, Relaxed);
            }
        }
    }

    fn signal_ready(&self) {
        let _guard = self.shared.ready.lock();
        self.shared.ready_signal.notify_all();
    }

    /// The last drop count, then the socket closes (the thread holds the other reference).
    fn finish(&self) {
        if let Some(socket) = self.shared.sockets[self.index].lock().take() {
            if let Some(drops) = net::kernel_drops_now(&socket) {
                self.shared.kernel_drops[self.index].fetch_max(drops, Relaxed);
            }
        }
        self.shared.live_threads.fetch_sub(1, Relaxed);
        self.signal_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::UdpSocket;

    fn config(batch: usize, flush_ms: u64) -> CollectorConfig {
        let mut config = CollectorConfig::new("127.0.0.1", 0);
        config.batch = batch;
        config.flush = Duration::from_millis(flush_ms);
        config
    }

    fn collect(collector: &Collector, datagrams: usize) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut seen = 0;
        while seen < datagrams {
            let batch = collector.batches().recv_timeout(Duration::from_secs(5)).expect("a batch in time");
            seen += batch.len();
            batches.push(batch);
        }
        batches
    }

    #[test]
    fn batches_hold_exactly_batch_datagrams_and_the_rest_is_flushed() {
        let collector = Collector::start(config(10, 100)).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..25u32 {
            sender.send_to(&i.to_be_bytes(), collector.local_addr()).unwrap();
        }
        let batches = collect(&collector, 25);
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [10, 10, 5]);
        let numbers: Vec<u32> = batches
            .iter()
            .flat_map(|b| (0..b.len()).map(|i| u32::from_be_bytes(b.payload(i).try_into().unwrap())))
            .collect();
        assert_eq!(numbers, (0..25).collect::<Vec<_>>());
        assert_eq!(batches[0].offsets, (0..=10).map(|i| i * 4).collect::<Vec<_>>());
        let stats = collector.stats();
        assert_eq!((stats.received, stats.batches, stats.dropped), (25, 3, 0));
        assert_eq!(
            collector.sources(),
            vec![(sender.local_addr().unwrap(), SourceCounts { received: 25, ..Default::default() })]
        );
    }

    #[test]
    fn a_full_queue_drops_whole_batches_and_counts_their_datagrams() {
        let mut config = config(5, 1000);
        config.queue_size = 2;
        config.seq = Some(SeqField::new(0, 4, true).unwrap());
        let collector = Collector::start(config).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..30u32 {
            sender.send_to(&i.to_be_bytes(), collector.local_addr()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while collector.stats().received < 30 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = collector.stats();
        assert_eq!((stats.received, stats.batches, stats.dropped), (30, 6, 20));
        assert_eq!(collector.batches().try_iter().map(|b| b.len()).sum::<usize>(), 10);
        let counts = collector.sources()[0].1;
        assert_eq!(counts, SourceCounts { received: 30, lost: 0, reordered: 0, duplicates: 0 });
    }

    #[test]
    fn stop_hands_over_the_partial_batch_and_closes_the_port() {
        let collector = Collector::start(config(1000, 10_000)).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            sender.send_to(b"reading", collector.local_addr()).unwrap();
        }
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(5);
        while collector.stats().received < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        collector.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(collect(&collector, 3)[0].len(), 3);
        assert!(collector.batches().recv_timeout(Duration::from_millis(10)).is_err());
        UdpSocket::bind(collector.local_addr()).expect("the port is free after stop");
    }

    #[test]
    fn parses_statsd_and_counts_malformed_lines() {
        let mut config = config(2, 20);
        config.format = Some(Format::Statsd);
        let collector = Collector::start(config).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"a:1|c\nbroken\nb:2|g|#k:v", collector.local_addr()).unwrap();
        sender.send_to(b"\xff\xff", collector.local_addr()).unwrap();
        let batch = collect(&collector, 2).remove(0);
        match &batch.metrics {
            Metrics::Statsd(metrics) => assert_eq!(metrics.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(collector.stats().parse_errors, 2);
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [config(0, 10), config(10, 0)] {
            assert!(matches!(Collector::start(bad), Err(ChatError::InvalidArgument(_))));
        }
    }
}
