//! Relays joined through a broker: every chat message a relay accepts is published once on its
//! room's subject (NATS) or channel (Redis), and every other relay of the room Acks it to its own
//! clients.
//!
//! The socket thread never waits for the broker: [`Bus::publish`] puts an encoded record on a
//! bounded queue to the bus thread and, when the queue is full or the broker is unreachable,
//! drops it and counts why. Records from other relays are decoded, checked (sequence gaps,
//! duplicates, foreign and malformed bytes) and tracked as `peers` on the bus thread, then handed
//! to the socket thread through a bounded channel and a [`Waker`] of its poller.
//!
//! Each backend runs on threads of its own: `nats` (async-nats on a current-thread runtime) and
//! `redis` (the synchronous client, one thread to publish, one to subscribe). Both reconnect by
//! themselves with a capped backoff, so a relay starts while its broker is down and federation
//! resumes when it comes back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};

use crate::error::{ChatError, Result};
use crate::net::Waker;
use crate::server::{Relayed, Sink};
use crate::stats::Counters as RelayCounters;
use crate::worker::wall_clock;

#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
pub mod wire;

/// How often a relay says it is alive, by default.
pub const DEFAULT_ANNOUNCE_PERIOD: Duration = Duration::from_secs(1);
/// A peer silent for this many of its announce periods has left.
pub const PEER_DEAD_AFTER_PERIODS: f64 = 3.0;
/// Records that may wait for the bus thread (each way) before new ones are dropped and counted.
pub const DEFAULT_QUEUE: usize = 65_536;
/// Longest a broker connection attempt may take; also bounds how long `stop()` can wait for it.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Reconnection delays: 50 ms doubling up to 2 s, so a broker that comes back is found quickly
/// and one that stays away costs little.
pub(crate) fn backoff(attempt: usize) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6)).min(2_000))
}

/// Which broker a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nats,
    Redis,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nats => "nats",
            Backend::Redis => "redis",
        }
    }

    fn of(url: &str) -> Result<Backend> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("nats" | "tls") => Ok(Backend::Nats),
            Some("redis" | "rediss") => Ok(Backend::Redis),
            _ => Err(ChatError::InvalidArgument(format!(
                "bus must be a nats://, tls://, redis:// or rediss:// URL (or a list of nats:// URLs of one \
                 cluster), not {url:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BusConfig {
    /// One Redis URL, or the URLs of one NATS cluster (tried in order; the client also follows
    /// the servers the cluster tells it about).
    pub urls: Vec<String>,
    /// Relays on the same broker and room form one chat; other rooms are invisible to them.
    pub room: String,
    pub announce_period: Duration,
    pub queue_size: usize,
}

impl BusConfig {
    pub fn new(urls: Vec<String>, room: impl Into<String>) -> BusConfig {
        BusConfig { urls, room: room.into(), announce_period: DEFAULT_ANNOUNCE_PERIOD, queue_size: DEFAULT_QUEUE }
    }

    /// Checks the URLs and the room; the backend they name.
    pub fn validate(&self) -> Result<Backend> {
        let Some(first) = self.urls.first() else {
            return Err(ChatError::InvalidArgument("bus must name at least one broker URL".to_owned()));
        };
        let backend = Backend::of(first)?;
        for url in &self.urls[1..] {
            if Backend::of(url)? != backend || backend == Backend::Redis {
                return Err(ChatError::InvalidArgument(format!(
                    "bus may list several URLs only for one NATS cluster; {url:?} does not belong with {first:?}"
                )));
            }
        }
        let room_ok = !self.room.is_empty()
            && self.room.len() <= 128
            && self.room.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !room_ok {
            return Err(ChatError::InvalidArgument(format!(
                "room must be 1 to 128 letters, digits, '_' or '-', not {:?}",
                self.room
            )));
        }
        if self.queue_size == 0 {
            return Err(ChatError::InvalidArgument("bus queue size must be at least 1".to_owned()));
        }
        if self.announce_period.is_zero() || self.announce_period > Duration::from_secs(3600) {
            return Err(ChatError::InvalidArgument("announce period must be between 1 ms and 1 hour".to_owned()));
        }
        match backend {
            #[cfg(feature = "nats")]
            Backend::Nats => nats::check_urls(&self.urls)?,
            #[cfg(feature = "redis")]
            Backend::Redis => redis::check_url(first)?,
            #[allow(unreachable_patterns)]
            other => {
                return Err(ChatError::InvalidArgument(format!(
                    "this build of chatudp has no {} bus (cargo feature `{}`)",
                    other.name(),
                    other.name()
                )))
            }
        }
        Ok(backend)
    }

    /// The NATS subject or Redis channel of the room.
    pub fn subject(&self) -> String {
        format!("chatudp.{}", self.room)
    }
}

/// Why a record was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusDrop {
    /// The broker was unreachable.
    Disconnected,
    /// The queue to the bus thread was full: the broker took records slower than clients sent.
    QueueFull,
    /// The broker client refused or timed out the publish.
    PublishError,
    /// A record from another relay arrived while the socket thread's inbound queue was full.
    InboundFull,
}

impl BusDrop {
    pub const ALL: [BusDrop; 4] =
        [BusDrop::Disconnected, BusDrop::QueueFull, BusDrop::PublishError, BusDrop::InboundFull];

    pub fn name(self) -> &'static str {
        match self {
            BusDrop::Disconnected => "disconnected",
            BusDrop::QueueFull => "queue_full",
            BusDrop::PublishError => "publish_error",
            BusDrop::InboundFull => "inbound_full",
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    foreign: AtomicU64,
    malformed: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
    slow_consumer: AtomicU64,
    dropped: [AtomicU64; BusDrop::ALL.len()],
}

/// A snapshot of the bus counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusStats {
    pub backend: &'static str,
    pub connected: bool,
    /// Chat records handed to the broker.
    pub published: u64,
    /// Chat records from other relays handed to the socket thread.
    pub received: u64,
    /// Gaps in other relays' sequence numbers: their records this relay never saw.
    pub lost: u64,
    /// Records seen twice (by sequence number), dropped.
    pub duplicates: u64,
    /// Messages on the room's subject that are not chatudp records.
    pub foreign: u64,
    /// chatudp records that do not parse.
    pub malformed: u64,
    /// Connections made after the first one.
    pub reconnects: u64,
    pub disconnects: u64,
    /// Times the broker client reported falling behind (NATS slow consumer).
    pub slow_consumer: u64,
    pub dropped: Vec<(BusDrop, u64)>,
}

impl BusStats {
    pub fn dropped(&self, reason: BusDrop) -> u64 {
        self.dropped.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}

/// Another relay of the room.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    pub id: u64,
    pub clients: u32,
    /// Wall-clock time it was last heard from.
    pub last_seen: f64,
}

#[derive(Debug)]
struct PeerState {
    clients: u32,
    last_seen: f64,
    period: f64,
    /// Highest sequence number seen (or known to be past) from this peer.
    last_seq: u64,
}

/// A chat record from another relay, for the socket thread to Ack to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub from: SocketAddr,
    pub payload: Vec<u8>,
}

/// What the socket thread, the bus threads and the owner share.
pub(crate) struct Shared {
    id: u64,
    backend: Backend,
    announce_period: Duration,
    counters: Counters,
    peers: Mutex<HashMap<u64, PeerState>>,
    connected: AtomicBool,
    /// Clients of this relay, for the announcements.
    clients: AtomicU32,
    /// Highest sequence number the bus thread has taken off the queue (published or dropped).
    handled_seq: AtomicU64,
    inbound: Sender<Inbound>,
    waker: Mutex<Option<Waker>>,
    /// Set by the bus thread when it wakes the socket thread; cleared by the socket thread
    /// before it drains, so one wake-up covers a whole burst.
    wake_pending: AtomicBool,
    stopping: Mutex<bool>,
    stop_signal: Condvar,
}

impl Shared {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn drain<'a>(&self, inbound: &'a Receiver<Inbound>) -> crossbeam_channel::TryIter<'a, Inbound> {
        self.wake_pending.store(false, Relaxed);
        inbound.try_iter()
    }

    fn set_clients(&self, clients: usize) {
        self.clients.store(clients.min(u32::MAX as usize) as u32, Relaxed);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.lock()
    }

    /// Sleeps up to `timeout`, or less when the bus is stopped; true when it is.
    pub(crate) fn sleep_unless_stopped(&self, timeout: Duration) -> bool {
        let mut stopping = self.stopping.lock();
        if !*stopping {
            self.stop_signal.wait_for(&mut stopping, timeout);
        }
        *stopping
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        let was = self.connected.swap(connected, Relaxed);
        if connected && !was {
            self.counters.connects.fetch_add(1, Relaxed);
        } else if !connected && was {
            self.counters.disconnects.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub(crate) fn count_slow_consumer(&self) {
        self.counters.slow_consumer.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_drop(&self, reason: BusDrop) {
        self.counters.dropped[reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn count_published(&self) {
        self.counters.published.fetch_add(1, Relaxed);
    }

    /// The bus thread took `record` off the queue.
    pub(crate) fn took(&self, record: &[u8]) {
        self.handled_seq.fetch_max(wire::seq_of(record), Relaxed);
    }

    pub(crate) fn announcement(&self, out: &mut Vec<u8>) {
        let period_ms = self.announce_period.as_millis().clamp(1, u32::MAX as u128) as u32;
        wire::encode_announce(self.id, self.handled_seq.load(Relaxed), self.clients.load(Relaxed), period_ms, out);
    }

    pub(crate) fn goodbye(&self, out: &mut Vec<u8>) {
        wire::encode_goodbye(self.id, self.handled_seq.load(Relaxed), out);
    }

    pub(crate) fn announce_period(&self) -> Duration {
        self.announce_period
    }

    /// Handles bytes received on the room's subject: counts, tracks the peer, and hands chat
    /// records to the socket thread.
    pub(crate) fn on_message(&self, bytes: &[u8]) {
        let record = match wire::decode(bytes) {
            Ok(record) => record,
            Err(wire::WireError::Foreign) => {
                self.counters.foreign.fetch_add(1, Relaxed);
                return;
            }
            Err(wire::WireError::Malformed) => {
                self.counters.malformed.fetch_add(1, Relaxed);
                return;
            }
        };
        if record.origin() == self.id {
            return;
        }
        let now = wall_clock();
        let default_period = self.announce_period.as_secs_f64();
        let mut peers = self.peers.lock();
        match record {
            wire::Record::Chat { origin, seq, from, payload } => {
                let peer = peers.entry(origin).or_insert_with(|| PeerState {
                    clients: 0,
                    last_seen: now,
                    period: default_period,
                    last_seq: seq.saturating_sub(1),
                });
                peer.last_seen = now;
                if seq <= peer.last_seq {
                    self.counters.duplicates.fetch_add(1, Relaxed);
                    return;
                }
                self.counters.lost.fetch_add(seq - peer.last_seq - 1, Relaxed);
                peer.last_seq = seq;
                drop(peers);
                self.deliver(Inbound { from, payload: payload.to_vec() });
            }
            wire::Record::Announce { origin, seq, clients, period_ms } => {
                let period = f64::from(period_ms) / 1000.0;
                let peer = peers.entry(origin).or_insert(PeerState { clients, last_seen: now, period, last_seq: seq });
                self.counters.lost.fetch_add(seq.saturating_sub(peer.last_seq), Relaxed);
                peer.last_seq = peer.last_seq.max(seq);
                (peer.clients, peer.last_seen, peer.period) = (clients, now, period);
                expire(&mut peers, now);
            }
            wire::Record::Goodbye { origin, seq } => {
                if let Some(peer) = peers.remove(&origin) {
                    self.counters.lost.fetch_add(seq.saturating_sub(peer.last_seq), Relaxed);
                }
            }
        }
    }

    fn deliver(&self, record: Inbound) {
        match self.inbound.try_send(record) {
            Ok(()) => {
                self.counters.received.fetch_add(1, Relaxed);
                if !self.wake_pending.swap(true, Relaxed) {
                    if let Some(waker) = self.waker.lock().as_ref() {
                        waker.wake();
                    }
                }
            }
            Err(TrySendError::Full(_)) => self.count_drop(BusDrop::InboundFull),
            // The socket thread is gone: the relay is stopping.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let mut peers = self.peers.lock();
        expire(&mut peers, wall_clock());
        let mut list: Vec<PeerInfo> =
            peers.iter().map(|(id, p)| PeerInfo { id: *id, clients: p.clients, last_seen: p.last_seen }).collect();
        list.sort_by_key(|p| p.id);
        list
    }

    fn stats(&self) -> BusStats {
        let c = &self.counters;
        BusStats {
            backend: self.backend.name(),
            connected: self.is_connected(),
            published: c.published.load(Relaxed),
            received: c.received.load(Relaxed),
            lost: c.lost.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            foreign: c.foreign.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            reconnects: c.connects.load(Relaxed).saturating_sub(1),
            disconnects: c.disconnects.load(Relaxed),
            slow_consumer: c.slow_consumer.load(Relaxed),
            dropped: BusDrop::ALL.iter().map(|r| (*r, c.dropped[*r as usize].load(Relaxed))).collect(),
        }
    }
}

/// Forgets peers silent for `PEER_DEAD_AFTER_PERIODS` of their own announce periods.
fn expire(peers: &mut HashMap<u64, PeerState>, now: f64) {
    peers.retain(|_, p| now - p.last_seen <= p.period * PEER_DEAD_AFTER_PERIODS);
}

/// The queue from the socket thread to the bus thread, of the backend's own kind.
enum Outbound {
    #[cfg(feature = "nats")]
    Nats(tokio::sync::mpsc::Sender<Vec<u8>>),
    #[cfg(feature = "redis")]
    Redis(Sender<Vec<u8>>),
}

impl Outbound {
    /// Never blocks; false when the queue is full.
    fn try_send(&self, record: Vec<u8>) -> bool {
        match self {
            #[cfg(feature = "nats")]
            Outbound::Nats(queue) => queue.try_send(record).is_ok(),
            #[cfg(feature = "redis")]
            Outbound::Redis(queue) => queue.try_send(record).is_ok(),
        }
    }
}

/// Read access to a running bus for the owner of the relay: counters and peers.
#[derive(Clone)]
pub struct BusStatus(Arc<Shared>);

impl BusStatus {
    pub fn stats(&self) -> BusStats {
        self.0.stats()
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        self.0.peers()
    }

    /// This relay's id on the bus.
    pub fn id(&self) -> u64 {
        self.0.id
    }
}

/// The publishing half every socket thread of a relay shares: the next sequence number and the
/// queue to the bus thread, behind one short lock, so that records enter the queue in the order
/// of their sequence numbers whichever worker relayed them. The other relays then see one
/// gap-free sequence per origin, and count as `lost` only what was really dropped.
struct Publisher {
    shared: Arc<Shared>,
    state: Mutex<PublishState>,
}

struct PublishState {
    next_seq: u64,
    /// `None` once the bus is stopping.
    outbound: Option<Outbound>,
}

impl Publisher {
    /// Numbers and queues an encoded chat record (its sequence number is written here). Never
    /// blocks: while the broker is unreachable, or the queue is full, the record is dropped and
    /// counted, and its number stays used, so the other relays count it as lost.
    fn publish(&self, mut record: Vec<u8>) {
        let mut state = self.state.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        if !self.shared.is_connected() {
            self.shared.count_drop(BusDrop::Disconnected);
            return;
        }
        let Some(outbound) = &state.outbound else { return };
        wire::set_seq(&mut record, seq);
        if !outbound.try_send(record) {
            self.shared.count_drop(BusDrop::QueueFull);
        }
    }

    /// A chat record with its sequence number still to be written by [`Publisher::publish`].
    fn encode(&self, from: &SocketAddr, payload: &[u8]) -> Vec<u8> {
        let mut record = Vec::with_capacity(wire::HEADER_LEN + 48 + payload.len());
        wire::encode_chat(self.shared.id, 0, from, payload, &mut record);
        record
    }
}

/// A relay's connection to its room, owned by the socket thread that delivers what other relays
/// publish; every socket thread publishes through a [`BusPublisher`]. Dropping it stops it.
pub struct Bus {
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    inbound: Receiver<Inbound>,
    threads: Vec<JoinHandle<()>>,
}

impl Bus {
    /// Starts the bus threads. Never waits for the broker: the connection is made (and remade)
    /// in the background.
    pub fn start(config: &BusConfig) -> Result<Bus> {
        let backend = config.validate()?;
        let (inbound_tx, inbound) = crossbeam_channel::bounded(config.queue_size);
        let mut id_bytes = [0u8; 8];
        getrandom::fill(&mut id_bytes)
            .map_err(|e| ChatError::Failed(format!("no randomness for the relay id: {e}")))?;
        let shared = Arc::new(Shared {
            id: u64::from_be_bytes(id_bytes),
            backend,
            announce_period: config.announce_period,
            counters: Counters::default(),
            peers: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            clients: AtomicU32::new(0),
            handled_seq: AtomicU64::new(0),
            inbound: inbound_tx,
            waker: Mutex::new(None),
            wake_pending: AtomicBool::new(false),
            stopping: Mutex::new(false),
            stop_signal: Condvar::new(),
        });
        let (outbound, threads) = match backend {
            #[cfg(feature = "nats")]
            Backend::Nats => {
                let (tx, rx) = tokio::sync::mpsc::channel(config.queue_size);
                (Outbound::Nats(tx), nats::spawn(Arc::clone(&shared), config, rx)?)
            }
            #[cfg(feature = "redis")]
            Backend::Redis => {
                let (tx, rx) = crossbeam_channel::bounded(config.queue_size);
                (Outbound::Redis(tx), redis::spawn(Arc::clone(&shared), config, rx)?)
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("validate() refuses backends that are not built"),
        };
        let state = Mutex::new(PublishState { next_seq: 1, outbound: Some(outbound) });
        let publisher = Arc::new(Publisher { shared: Arc::clone(&shared), state });
        Ok(Bus { shared, publisher, inbound, threads })
    }

    /// Wakes `waker` whenever records from other relays are waiting in [`Bus::drain`].
    pub fn set_waker(&self, waker: Waker) {
        *self.shared.waker.lock() = Some(waker);
        // Whatever arrived before is taken at the next drain.
        self.shared.wake_pending.store(false, Relaxed);
    }

    pub fn status(&self) -> BusStatus {
        BusStatus(Arc::clone(&self.shared))
    }

    /// Publishes a chat message `from` one of this relay's clients at once. Never blocks: while
    /// the broker is unreachable, or the queue is full, the record is dropped and counted.
    pub fn publish(&self, from: &SocketAddr, payload: &[u8]) {
        self.publisher.publish(self.publisher.encode(from, payload));
    }

    /// A publishing handle for one socket thread: a [`Sink`] that publishes what it relays.
    pub fn publisher(&self) -> BusPublisher {
        BusPublisher { publisher: Arc::clone(&self.publisher) }
    }

    /// Records from other relays that arrived since the last call, oldest first.
    pub fn drain(&self) -> crossbeam_channel::TryIter<'_, Inbound> {
        self.shared.drain(&self.inbound)
    }

    /// Tells the other relays how many clients this one has (in the next announcement).
    pub fn set_clients(&self, clients: usize) {
        self.shared.set_clients(clients);
    }

    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Says goodbye (when connected) and ends the bus threads; prompt whatever the broker does,
    /// idempotent.
    pub fn stop(&mut self) {
        *self.shared.stopping.lock() = true;
        self.shared.stop_signal.notify_all();
        // Closing the queue ends the publishing thread's wait at once.
        self.publisher.state.lock().outbound = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.shared.set_connected(false);
    }
}

/// One socket thread's way onto the bus: every chat message its act stage relays (never what
/// came from the bus) is encoded, then numbered and queued under the publisher's short lock,
/// before the batch's local Acks go out (so `stats` count it by the time a client sees its Ack).
pub struct BusPublisher {
    publisher: Arc<Publisher>,
}

impl Sink for BusPublisher {
    fn relay(&mut self, message: &Relayed<'_>, _counters: &RelayCounters) {
        self.publisher.publish(self.publisher.encode(&message.from, message.payload));
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
