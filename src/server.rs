//! The group-chat server: one socket thread that reads in batches, keeps the clients table,
//! answers each chat message with one Ack sent to every live client, and expires silent
//! clients on a timer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use socket2::Socket;

use crate::auth::{CookieJar, Direction, Opener, Sealer, TRAILER_LEN};
use crate::bus::{Bus, BusConfig, BusStatus};
use crate::error::{ChatError, Result};
use crate::events::{self, Event, EventSender, LeaveReason};
use crate::limits::{Network, Rate};
use crate::net::{self, Outgoing, RecvBatch, SendBatch, SocketOptions, Waiter};
use crate::protocol::{self, BYE, MAX_DATAGRAM};
use crate::relay::DEFAULT_MAX_CLIENTS;
use crate::relay::{Outcome, Relay};
use crate::stats::{Counters, DropReason, Stats};
use crate::worker::{wall_clock, Control, Endpoint, Worker};

/// Datagrams read per system call.
pub const RECV_BATCH: usize = 32;
/// Kernel buffer asked for by default (the kernel caps it at `net.core.rmem_max`/`wmem_max`): a
/// relay takes bursts from many clients at once, and every Ack fans out to all of them.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;
/// Batches handled per wake-up before the timer gets a look in.
const BATCHES_PER_WAKE: usize = 64;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Seconds a client may stay silent (the original `interval`).
    pub interval: f64,
    /// Extra seconds the expiry timer waits beyond `interval` before it removes a silent client,
    /// so that a heartbeat sent every `interval` seconds is not raced by the timer. The check the
    /// original makes when a chat message arrives still uses `interval` alone.
    pub expiry_grace: f64,
    /// Bytes read per datagram; longer datagrams are cut, as `recvfrom(bufsize)` cuts them.
    pub bufsize: usize,
    /// Events that may wait for the consumer before new ones are dropped (and counted).
    pub queue_size: usize,
    pub socket: SocketOptions,
    /// Remove a client as soon as the network reports its port unreachable, instead of sending
    /// to it until it expires as the original does.
    pub drop_unreachable: bool,
    /// New sources beyond this many are refused; live clients are never evicted.
    pub max_clients: usize,
    /// Per-source limit on chat messages; heartbeats are never limited.
    pub rate: Option<Rate>,
    /// When not empty, datagrams from other networks are dropped.
    pub allow: Vec<Network>,
    /// New sources must echo a cookie before they join (see `auth`).
    pub validate: bool,
    /// Shared secret: every datagram carries an authentication trailer (see `auth`).
    pub secret: Option<Vec<u8>>,
    /// Relays on the same broker and room form one chat (see `bus`).
    pub bus: Option<BusConfig>,
}

impl ServerConfig {
    pub fn new(host: impl Into<String>, port: u16, interval: f64) -> ServerConfig {
        ServerConfig {
            host: host.into(),
            port,
            interval,
            expiry_grace: interval / 2.0,
            bufsize: protocol::DEFAULT_BUFSIZE,
            queue_size: 65_536,
            socket: SocketOptions { rcvbuf: Some(DEFAULT_SOCKET_BUFFER), sndbuf: Some(DEFAULT_SOCKET_BUFFER) },
            drop_unreachable: true,
            max_clients: DEFAULT_MAX_CLIENTS,
            rate: None,
            allow: Vec::new(),
            validate: false,
            secret: None,
            bus: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        validate_interval(self.interval)?;
        if !(self.expiry_grace.is_finite() && self.expiry_grace >= 0.0) {
            return Err(ChatError::InvalidArgument(format!(
                "expiry_grace must be a number of seconds >= 0, not {}",
                self.expiry_grace
            )));
        }
        validate_bufsize(self.bufsize)?;
        if let Some(bus) = &self.bus {
            bus.validate()?;
        }
        if self.max_clients == 0 {
            return Err(ChatError::InvalidArgument("max_clients must be at least 1".to_owned()));
        }
        validate_queue_size(self.queue_size)
    }
}

pub(crate) fn validate_interval(interval: f64) -> Result<()> {
    if interval.is_finite() && interval > 0.0 && interval <= 1e9 {
        Ok(())
    } else {
        Err(ChatError::InvalidArgument(format!("interval must be a number of seconds > 0, not {interval}")))
    }
}

pub(crate) fn validate_bufsize(bufsize: usize) -> Result<()> {
    if (1..=MAX_DATAGRAM).contains(&bufsize) {
        Ok(())
    } else {
        Err(ChatError::InvalidArgument(format!("bufsize must be between 1 and {MAX_DATAGRAM} bytes, not {bufsize}")))
    }
}

pub(crate) fn validate_queue_size(size: usize) -> Result<()> {
    if size >= 1 {
        Ok(())
    } else {
        Err(ChatError::InvalidArgument("queue_size must be at least 1".to_owned()))
    }
}

/// State shared between the socket thread and the owner.
struct Shared {
    relay: Mutex<Relay>,
    counters: Counters,
}

/// A running group-chat server. Dropping it stops it.
pub struct Server {
    shared: Arc<Shared>,
    local: SocketAddr,
    events: Receiver<Event>,
    bus: Option<BusStatus>,
    worker: Worker,
}

impl Server {
    /// Binds and starts the socket thread.
    pub fn start(config: ServerConfig) -> Result<Server> {
        config.validate()?;
        // Taken before binding: nothing sealed before this server could receive it is accepted.
        let started = wall_clock();
        let bind = net::resolve(&config.host, config.port)?;
        let socket = Arc::new(net::udp_socket(bind, true, config.socket)?);
        let local = net::local_addr(&socket)?;
        let error_queue = config.drop_unreachable && net::enable_error_queue(&socket, local.is_ipv6())?;
        let (waiter, waker) = Waiter::new(&socket)?;
        let (sender, events) = events::channel(config.queue_size);
        let shared = Arc::new(Shared {
            relay: Mutex::new(Relay::with_limits(config.interval, config.max_clients, config.rate)),
            counters: Counters::default(),
        });
        let bus = config.bus.as_ref().map(Bus::start).transpose()?;
        if let Some(bus) = &bus {
            bus.set_waker(waker.clone());
        }
        let bus_status = bus.as_ref().map(Bus::status);
        // `bufsize` counts payload bytes: in authenticated mode the trailer comes on top.
        let recv_len = config.bufsize + if config.secret.is_some() { TRAILER_LEN } else { 0 };
        let mut relay_loop = RelayLoop {
            bus,
            out: Outbox {
                socket: Arc::clone(&socket),
                batch: SendBatch::default(),
                sealer: config.secret.as_deref().map(|secret| Sealer::new(secret, Direction::ToClient)),
                sealed: Vec::new(),
                queued: Outgoing::default(),
                icmp_seen: false,
            },
            socket,
            waiter,
            shared: Arc::clone(&shared),
            events: sender,
            recv: RecvBatch::new(RECV_BATCH, recv_len),
            ack: Vec::with_capacity(config.bufsize * 4 + 64),
            pending: Vec::new(),
            live: Vec::new(),
            gone: Vec::new(),
            max_age: config.interval + config.expiry_grace,
            error_queue,
            allow: config.allow,
            cookies: config.validate.then(CookieJar::default),
            opener: config
                .secret
                .as_deref()
                .map(|secret| Opener::new(secret, Direction::ToServer, started, replay_cache_size(config.max_clients))),
        };
        let worker = Worker::spawn("chatudp-server", waker, move |control| relay_loop.run(control))?;
        Ok(Server { shared, local, events, bus: bus_status, worker })
    }

    /// A snapshot of the clients table: address and wall-clock time last heard from.
    pub fn clients(&self) -> Vec<(SocketAddr, f64)> {
        self.shared.relay.lock().iter().map(|(a, t)| (*a, t)).collect()
    }

    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// The bus's counters and the other relays of the room; `None` without a bus.
    pub fn bus(&self) -> Option<&BusStatus> {
        self.bus.as_ref()
    }

    /// Joins, leaves and chat messages, in the order the socket thread saw them.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }
}

impl Endpoint for Server {
    fn worker(&self) -> &Worker {
        &self.worker
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn event_queue(&self) -> Option<&Receiver<Event>> {
        Some(&self.events)
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Sends each payload to a list of addresses; in authenticated mode seals it first (once).
struct Outbox {
    socket: Arc<Socket>,
    batch: SendBatch,
    sealer: Option<Sealer>,
    sealed: Vec<u8>,
    queued: Outgoing,
    /// A send met an ICMP error about an earlier datagram: the error queue has news.
    icmp_seen: bool,
}

impl Outbox {
    /// Queues `payload` for every address in `to`, sealed first in authenticated mode.
    fn queue(&mut self, payload: &[u8], to: &[SocketAddr]) {
        match &mut self.sealer {
            Some(sealer) => {
                sealer.seal(payload, wall_clock(), &mut self.sealed);
                self.queued.push(&self.sealed, to);
            }
            None => self.queued.push(payload, to),
        }
    }

    /// Sends everything queued: the Acks of a whole receive batch in as few calls as possible.
    fn flush(&mut self, counters: &Counters) {
        if self.queued.is_empty() {
            return;
        }
        let report = self.batch.send_many(&self.socket, &self.queued, |_, errno| counters.send_failed(errno));
        self.queued.clear();
        Counters::add(&counters.sent, report.sent as u64);
        self.icmp_seen |= report.deferred_errors > 0;
    }

    fn send(&mut self, payload: &[u8], to: &[SocketAddr], counters: &Counters) {
        self.queue(payload, to);
        self.flush(counters);
    }
}

struct RelayLoop {
    /// The room this relay shares with others, when it has one.
    bus: Option<Bus>,
    socket: Arc<Socket>,
    waiter: Waiter,
    shared: Arc<Shared>,
    events: EventSender,
    recv: RecvBatch,
    out: Outbox,
    ack: Vec<u8>,
    /// Events of the batch being handled, handed over once its Acks are sent.
    pending: Vec<Event>,
    live: Vec<SocketAddr>,
    gone: Vec<SocketAddr>,
    max_age: f64,
    /// ICMP errors are queued on the socket (see `ServerConfig::drop_unreachable`).
    error_queue: bool,
    allow: Vec<Network>,
    cookies: Option<CookieJar>,
    opener: Option<Opener>,
}

impl RelayLoop {
    fn run(&mut self, control: &Control) {
        let mut next_sweep = wall_clock() + self.max_age;
        while !control.is_stopping() {
            let wait = Duration::from_secs_f64((next_sweep - wall_clock()).clamp(0.0, self.max_age));
            match self.waiter.wait(wait) {
                Ok(true) => self.drain(control),
                Ok(false) => {}
                // A poller that cannot wait any more leaves nothing to do but stop.
                Err(_) => break,
            }
            self.deliver_from_bus();
            let now = wall_clock();
            if now >= next_sweep {
                next_sweep = self.sweep(now);
            }
        }
        self.say_goodbye();
        if let Some(bus) = &mut self.bus {
            bus.stop();
        }
    }

    fn drain(&mut self, control: &Control) {
        let mut received = 0;
        for _ in 0..BATCHES_PER_WAKE {
            if control.is_stopping() {
                return;
            }
            match self.recv.recv(&self.socket) {
                Ok(0) => break,
                Ok(n) => {
                    received += n;
                    self.handle_batch(n);
                    // A short batch emptied the queue; the (level-triggered) poller tells us
                    // when more comes, which saves a system call per wake-up.
                    if n < RECV_BATCH {
                        break;
                    }
                }
                // An ICMP report about an earlier send: the socket itself is fine.
                Err(e) if net::is_deferred_icmp_error(&e) => self.out.icmp_seen = true,
                Err(_) => break,
            }
        }
        // A wake-up with nothing to read is the poller reporting a queued ICMP error.
        if self.error_queue && (self.out.icmp_seen || received == 0) {
            self.out.icmp_seen = false;
            self.drop_unreachable();
        }
    }

    /// Removes the clients the network reported unreachable.
    fn drop_unreachable(&mut self) {
        self.gone.clear();
        if net::drain_unreachable(&self.socket, &mut self.gone) == 0 {
            return;
        }
        let mut relay = self.shared.relay.lock();
        let counters = &self.shared.counters;
        for addr in &self.gone {
            if relay.remove(addr) {
                Counters::add(&counters.unreachable, 1);
                Counters::add(&counters.leaves, 1);
                self.events.emit(Event::Leave(*addr, LeaveReason::Unreachable), counters);
            }
        }
    }

    fn handle_batch(&mut self, count: usize) {
        let counters = &self.shared.counters;
        Counters::add(&counters.received, count as u64);
        let now = wall_clock();
        let mut relay = self.shared.relay.lock();
        for index in 0..count {
            let datagram = self.recv.get(index);
            let from = datagram.from;
            if datagram.truncated {
                Counters::add(&counters.truncated, 1);
            }
            if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(from.ip())) {
                counters.drop_one(DropReason::NotAllowed);
                self.pending.push(Event::Reject(from, DropReason::NotAllowed));
                continue;
            }
            let payload = match &mut self.opener {
                Some(opener) => match opener.open(datagram.data, now) {
                    Ok(payload) => payload,
                    Err(why) => {
                        counters.refuse(why);
                        continue;
                    }
                },
                None => datagram.data,
            };
            self.gone.clear();
            if let Some(cookies) = &self.cookies {
                if !relay.contains(&from) {
                    if cookies.is_valid_echo(payload, &from, now) {
                        if relay.refresh(from, now) {
                            Counters::add(&counters.joins, 1);
                            self.pending.push(Event::Join(from));
                        }
                    } else {
                        counters.drop_one(DropReason::Auth);
                        if protocol::classify(payload) != protocol::Kind::Quit {
                            if let Some(challenge) = cookies.challenge(&from, now, datagram.data.len()) {
                                self.out.queue(&challenge, &[from]);
                            }
                        }
                    }
                    continue;
                }
            }
            self.gone.clear();
            let outcome = relay.on_datagram(payload, from, now, &mut self.live, &mut self.gone);
            let joined = match outcome {
                Outcome::Heartbeat { joined } => {
                    Counters::add(&counters.heartbeats, 1);
                    joined
                }
                Outcome::Chat { joined } | Outcome::RateLimited { joined } => joined,
                Outcome::Quit { .. } | Outcome::TableFull => false,
            };
            if joined {
                Counters::add(&counters.joins, 1);
                self.pending.push(Event::Join(from));
            }
            match outcome {
                Outcome::Heartbeat { .. } => {}
                Outcome::Quit { left } => {
                    if left {
                        Counters::add(&counters.leaves, 1);
                        self.pending.push(Event::Leave(from, LeaveReason::Quit));
                    }
                }
                Outcome::RateLimited { .. } => counters.drop_one(DropReason::Rate),
                Outcome::TableFull => {
                    counters.drop_one(DropReason::TableFull);
                    self.pending.push(Event::Reject(from, DropReason::TableFull));
                }
                Outcome::Chat { .. } => {
                    protocol::write_ack(payload, &from, &mut self.ack);
                    self.out.queue(&self.ack, &self.live);
                    Counters::add(&counters.relayed, 1);
                    if let Some(bus) = &mut self.bus {
                        bus.publish(&from, payload);
                    }
                    self.pending.push(Event::Message { data: payload.to_vec(), from });
                }
            }
            expired_events(&self.gone, counters, &mut self.pending);
        }
        drop(relay);
        // The Acks of the whole batch go out first, in as few calls as possible; the events
        // cost the round trip nothing.
        self.out.flush(counters);
        self.flush_events();
    }

    /// Acks the chat messages other relays of the room published to this relay's live clients,
    /// byte for byte as if their senders were here. Nothing from the bus is published again.
    fn deliver_from_bus(&mut self) {
        let Some(bus) = &self.bus else { return };
        let now = wall_clock();
        let relay = self.shared.relay.lock();
        bus.set_clients(relay.len());
        let mut records = bus.drain().peekable();
        if records.peek().is_none() {
            return;
        }
        self.live.clear();
        self.live.extend(relay.iter().filter(|(_, seen)| now - seen <= relay.interval()).map(|(addr, _)| *addr));
        drop(relay);
        for record in records {
            protocol::write_ack(&record.payload, &record.from, &mut self.ack);
            self.out.queue(&self.ack, &self.live);
        }
        self.out.flush(&self.shared.counters);
    }

    fn flush_events(&mut self) {
        for event in self.pending.drain(..) {
            self.events.emit(event, &self.shared.counters);
        }
    }

    /// Expires silent clients; returns when to look again.
    fn sweep(&mut self, now: f64) -> f64 {
        self.gone.clear();
        let next = self.shared.relay.lock().sweep(now, self.max_age, &mut self.gone);
        expired_events(&self.gone, &self.shared.counters, &mut self.pending);
        self.flush_events();
        // Never sooner than a small slice of the interval, so a table of many clients with
        // spread-out deadlines is not rescanned continuously.
        let min_gap = (self.max_age / 50.0).clamp(0.001, 0.1);
        next.map_or(now + self.max_age, |deadline| deadline.max(now + min_gap))
    }

    fn say_goodbye(&mut self) {
        self.live.clear();
        self.live.extend(self.shared.relay.lock().addresses().copied());
        self.out.send(BYE, &self.live, &self.shared.counters);
    }
}

/// Senders the replay cache remembers at once: every client of a full table, restarted once
/// within the freshness window, and some room for a small table's churn.
fn replay_cache_size(max_clients: usize) -> usize {
    max_clients.saturating_mul(2).max(1024)
}

fn expired_events(gone: &[SocketAddr], counters: &Counters, events: &mut Vec<Event>) {
    for addr in gone {
        Counters::add(&counters.expired, 1);
        Counters::add(&counters.leaves, 1);
        events.push(Event::Leave(*addr, LeaveReason::Expired));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Instant;

    fn start(interval: f64) -> Server {
        Server::start(ServerConfig::new("127.0.0.1", 0, interval)).unwrap()
    }

    fn peer() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        socket
    }

    fn recv(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 65_536];
        let n = socket.recv(&mut buf).expect("expected a datagram");
        buf[..n].to_vec()
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn relays_acks_to_all_clients_and_says_bye() {
        let server = start(10.0);
        let (a, b) = (peer(), peer());
        a.send_to(b"^hb^", server.local_addr()).unwrap();
        wait_for("a to join", || server.clients().len() == 1);
        b.send_to(b"hello", server.local_addr()).unwrap();
        let expected = format!("Ack b'HELLO'. from 127.0.0.1:{}", b.local_addr().unwrap().port()).into_bytes();
        assert_eq!(recv(&a), expected);
        assert_eq!(recv(&b), expected);
        server.stop();
        assert_eq!(recv(&a), b"Bye!");
        assert_eq!(recv(&b), b"Bye!");
        assert!(!server.is_running());
        server.stop();
        let stats = server.stats();
        assert_eq!((stats.received, stats.relayed, stats.sent, stats.joins), (2, 1, 4, 2));
    }

    #[test]
    fn timer_expires_silent_clients() {
        let server = start(0.1);
        let a = peer();
        a.send_to(b"^hb^", server.local_addr()).unwrap();
        wait_for("a to join", || server.clients().len() == 1);
        wait_for("a to expire", || server.clients().is_empty());
        let events: Vec<Event> = server.events().try_iter().collect();
        let a_addr = a.local_addr().unwrap();
        assert_eq!(events, vec![Event::Join(a_addr), Event::Leave(a_addr, LeaveReason::Expired)]);
        assert_eq!(server.stats().expired, 1);
    }

    #[test]
    fn unreachable_clients_leave_at_once() {
        let server = start(10.0);
        let (dead, alive) = (peer(), peer());
        let dead_addr = dead.local_addr().unwrap();
        dead.send_to(b"^hb^", server.local_addr()).unwrap();
        wait_for("dead to join", || server.clients().len() == 1);
        drop(dead);
        alive.send_to(b"one", server.local_addr()).unwrap();
        assert!(recv(&alive).starts_with(b"Ack b'ONE'"));
        wait_for("dead to leave", || server.clients().len() == 1);
        assert_eq!(server.clients()[0].0, alive.local_addr().unwrap());
        let events: Vec<Event> = server.events().try_iter().collect();
        assert!(events.contains(&Event::Leave(dead_addr, LeaveReason::Unreachable)), "{events:?}");
        assert_eq!(server.stats().unreachable, 1);
    }

    #[test]
    fn stop_is_prompt_while_idle() {
        let server = start(10.0);
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn rejects_bad_arguments_and_busy_ports() {
        assert!(matches!(Server::start(ServerConfig::new("127.0.0.1", 0, 0.0)), Err(ChatError::InvalidArgument(_))));
        let mut config = ServerConfig::new("127.0.0.1", 0, 1.0);
        config.bufsize = MAX_DATAGRAM + 1;
        assert!(matches!(Server::start(config), Err(ChatError::InvalidArgument(_))));
        let first = start(1.0);
        let busy = Server::start(ServerConfig::new("127.0.0.1", first.local_addr().port(), 1.0));
        assert!(matches!(busy, Err(ChatError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse));
    }
}
