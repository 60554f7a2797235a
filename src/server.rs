//! The group-chat server: one socket thread that reads in batches, keeps the clients table,
//! answers each chat message with one Ack sent to every live client, and expires silent
//! clients on a timer.
//!
//! # The relay pipeline
//!
//! Each datagram of a receive batch goes through four stages, each a small type of its own:
//!
//! 1. **filter** ([`Filter`]): the `allow` list, then authentication (`secret=`): who may talk.
//! 2. **admit** ([`Admission`], then [`Relay::on_datagram`]): the cookie check of
//!    `validate=True`, the clients table and its limits (`max_clients`, `rate`).
//! 3. **act** ([`RelayLoop::act`]): heartbeat, `quit`, or a chat message, whose Ack goes to the
//!    live table through the [`Fanout`].
//! 4. **hand over** ([`Handover`]): counters and events (joins, leaves, refusals, messages),
//!    handed to the consumer once the batch's Acks are sent.
//!
//! A refusal at any stage is one [`DropReason`], counted (and reported) in one place,
//! [`Handover::refuse`].
//!
//! ## Where to plug in: [`Sink`]
//!
//! The act stage hands every relayed chat message to the [`Fanout`]: first to the local
//! clients (the Acks), then to every extra [`Sink`] given to [`Server::start_with_sinks`]
//! (a message bus publishing to other relays, a worker fanning out to its share of the table,
//! ...). A sink sees the payload, its sender, the Ack bytes and the live recipients, and is
//! flushed once per receive batch, after the local Acks are sent. No stage needs to change to
//! add one.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use socket2::Socket;

use crate::auth::{self, CookieJar, Direction, HoldQueue, Opener, Refused, Sealer, TRAILER_LEN};
use crate::bus::{Bus, BusStatus};
pub use crate::config::ServerConfig;
use crate::config::RECV_BATCH;
use crate::error::{ChatError, Result};
use crate::events::{self, Event, EventReceiver, EventSender, LeaveReason};
use crate::limits::Network;
use crate::net::{self, Outgoing, RecvBatch, SendBatch, Waiter};
use crate::protocol::{self, BYE};
use crate::relay::{self, Outcome, Relay};
use crate::reuseport;
use crate::stats::{Counters, DropReason, Stats};
use crate::worker::{wall_clock, Control, Endpoint, Worker, MIN_TIMER_PERIOD};

/// Batches handled per wake-up before the timer gets a look in.
const BATCHES_PER_WAKE: usize = 64;

/// Datagrams the owner may have queued for the socket thread at once, and their bytes: beyond
/// either, [`Server::send_to`] and [`Server::broadcast`] refuse with `WouldBlock`, as a full
/// non-blocking socket does.
const MAX_QUEUED_SENDS: usize = 65_536;
const MAX_QUEUED_BYTES: usize = 16 << 20;

/// State shared between the socket thread and the owner.
struct Shared {
    relay: Mutex<Relay>,
    counters: Counters,
    /// Locked after `relay` when both are held.
    commands: Mutex<Commands>,
    /// Set when the leader has sends to make: it looks at `commands` only then.
    sends_pending: AtomicBool,
    /// Set (under the table lock) when `commands.removed` has leaves to report, so the socket
    /// threads take the commands lock only then, not once per batch.
    removals_pending: AtomicBool,
}

/// What the owner asked of the socket threads, done at their next turn.
#[derive(Default)]
struct Commands {
    /// Clients the owner removed from the table, whose leave is not reported yet: reported by
    /// the next socket thread to take the table, before anything it reads may bring them back.
    removed: Vec<SocketAddr>,
    /// Datagrams to send from the server's socket: to one address, or (`None`) to every live
    /// client.
    sends: VecDeque<(Vec<u8>, Option<SocketAddr>)>,
    queued_bytes: usize,
}

/// A running group-chat server. Dropping it stops it.
pub struct Server {
    shared: Arc<Shared>,
    local: SocketAddr,
    events: EventReceiver,
    bus: Option<BusStatus>,
    /// Wakes the leader for the owner's commands; dropped at `stop()`.
    leader: Mutex<Option<net::Waker>>,
    /// Payload bytes a datagram of the owner's may hold (less the trailer with `secret=`).
    trailer: usize,
    worker: Worker,
}

impl Server {
    /// Binds and starts the socket threads.
    pub fn start(config: ServerConfig) -> Result<Server> {
        Server::start_with_sinks(config, Vec::new)
    }

    /// Binds and starts the socket threads; every relayed chat message also goes to the sinks
    /// that `sinks` makes, once for each socket thread (see
    /// [the pipeline](self#where-to-plug-in-sink)).
    pub fn start_with_sinks(config: ServerConfig, mut sinks: impl FnMut() -> Vec<Box<dyn Sink>>) -> Result<Server> {
        config.validate()?;
        // Taken before binding: nothing sealed before this server could receive it is accepted.
        let started = wall_clock();
        let bind = net::resolve(&config.host, config.port)?;
        let sockets = reuseport::bind_group(bind, config.workers, config.socket)?;
        let local = net::local_addr(&sockets[0])?;
        let (sender, events) = events::channel(config.queue_size, config.route);
        let shared = Arc::new(Shared {
            relay: Mutex::new(Relay::with_limits(config.interval, config.max_clients, config.rate)),
            counters: Counters::default(),
            commands: Mutex::new(Commands::default()),
            sends_pending: AtomicBool::new(false),
            removals_pending: AtomicBool::new(false),
        });
        // One replay cache and one cookie key for every worker: a source the kernel moves to
        // another worker is still known.
        let opener = config.secret.as_deref().map(|secret| {
            let opener = Opener::new(secret, Direction::ToServer, started, replay_cache_size(config.max_clients));
            Arc::new(Mutex::new(opener))
        });
        let cookies = config.validate.then(|| Arc::new(CookieJar::default()));
        let held = Arc::new(Mutex::new(HoldQueue::default()));
        // With a bus, every socket thread publishes what it relays (a sink of its own, sharing
        // one sequence), and what other relays publish comes back to the leader alone, woken
        // by its poller, which Acks it to the whole table once.
        let bus = config.bus.as_ref().map(Bus::start).transpose()?;
        let bus_status = bus.as_ref().map(Bus::status);
        let mut loops = Vec::with_capacity(sockets.len());
        let mut wakers = Vec::with_capacity(sockets.len());
        let sockets: Vec<Arc<Socket>> = sockets.into_iter().map(Arc::new).collect();
        // The kernel files the ICMP error about a datagram on the socket of the group that the
        // destination's own datagrams would reach, not on the one that sent it: every worker
        // reads every error queue of the group while it sends.
        let mut error_queues = Vec::new();
        for socket in &sockets {
            if config.drop_unreachable && net::enable_error_queue(socket, local.is_ipv6())? {
                error_queues.push(Arc::clone(socket));
            }
        }
        // A socket alone waits in its own blocking receive, as a bare relay does; the sockets of
        // a group wait in epoll, since a wake-up datagram would reach whichever the kernel picks.
        let alone = sockets.len() == 1;
        for socket in sockets {
            let (waiter, waker) = if alone { Waiter::in_receive(&socket)? } else { Waiter::new(&socket)? };
            wakers.push(waker);
            let (filter, admission) = (
                Filter { allow: config.allow.clone(), opener: opener.clone() },
                Admission { cookies: cookies.clone(), held: Arc::clone(&held) },
            );
            let mut group_sinks = sinks();
            if let Some(bus) = &bus {
                group_sinks.push(Box::new(bus.publisher()));
            }
            let group = Group {
                shared: Arc::clone(&shared),
                events: sender.clone(),
                sinks: group_sinks,
                error_queues: error_queues.clone(),
            };
            loops.push(RelayLoop::new(&config, socket, waiter, filter, admission, group));
        }
        if let Some(bus) = bus {
            bus.set_waker(wakers[0].clone());
            loops[0].bus = Some(bus);
        }
        let mut leader = loops.remove(0);
        let waker = wakers.remove(0);
        let leader_waker = waker.clone();
        let (ready, group_started) = crossbeam_channel::bounded(1);
        let worker = Worker::spawn("chatudp-server", waker, move |control| {
            run_group(&mut leader, loops, wakers, control, ready);
        })?;
        // Returns once every socket thread runs (or could not be started).
        if let Ok(Err(error)) = group_started.recv_timeout(Duration::from_secs(10)) {
            worker.stop();
            return Err(ChatError::Io(error));
        }
        let trailer = if config.secret.is_some() { TRAILER_LEN } else { 0 };
        Ok(Server { shared, local, events, bus: bus_status, leader: Mutex::new(Some(leader_waker)), trailer, worker })
    }

    /// A snapshot of the clients table: address and wall-clock time last heard from.
    pub fn clients(&self) -> Vec<(SocketAddr, f64)> {
        self.shared.relay.lock().iter().map(|(a, t)| (*a, t)).collect()
    }

    /// When `addr` was last heard from, if it is in the table.
    pub fn last_seen(&self, addr: &SocketAddr) -> Option<f64> {
        self.shared.relay.lock().last_seen(addr)
    }

    /// Removes `addr` from the table, as its `quit` would; its leave is reported with
    /// [`LeaveReason::Removed`]. False when it was not in the table.
    pub fn remove(&self, addr: &SocketAddr) -> bool {
        let mut relay = self.shared.relay.lock();
        let removed = relay.remove(addr);
        if removed {
            self.report_removed(std::slice::from_ref(addr));
        }
        drop(relay);
        self.wake_leader();
        removed
    }

    /// Removes every client from the table (see [`Server::remove`]); returns how many.
    pub fn clear(&self) -> usize {
        let mut relay = self.shared.relay.lock();
        let gone: Vec<SocketAddr> = relay.addresses().copied().collect();
        for addr in &gone {
            relay.remove(addr);
        }
        self.report_removed(&gone);
        drop(relay);
        self.wake_leader();
        gone.len()
    }

    /// Leaves for the socket threads to report; called with the table locked, so they are
    /// reported before anything read later can bring these clients back.
    fn report_removed(&self, gone: &[SocketAddr]) {
        if gone.is_empty() {
            return;
        }
        self.shared.commands.lock().removed.extend_from_slice(gone);
        self.shared.removals_pending.store(true, Ordering::Release);
    }

    /// Sends `data` to `to` from the server's socket (sealed with `secret=`), on the socket
    /// thread: never blocks. See [`Server::broadcast`] for the errors.
    pub fn send_to(&self, data: &[u8], to: SocketAddr) -> Result<()> {
        if to.is_ipv6() != self.local.is_ipv6() {
            let (want, got) = if self.local.is_ipv6() { ("IPv6", "IPv4") } else { ("IPv4", "IPv6") };
            return Err(ChatError::InvalidArgument(format!(
                "addr {to} is an {got} address; this server's socket is {want}"
            )));
        }
        self.queue_send(data, Some(to))
    }

    /// Sends `data` to every live client (heard from within `interval`), as the relay sends an
    /// Ack, on the socket thread: never blocks. `ChatError::Closed` once stopped, `TooLong`
    /// beyond one datagram, `Io(WouldBlock)` when the socket thread has too much queued.
    pub fn broadcast(&self, data: &[u8]) -> Result<()> {
        self.queue_send(data, None)
    }

    fn queue_send(&self, data: &[u8], to: Option<SocketAddr>) -> Result<()> {
        if let Some(why) = self.worker.failure() {
            return Err(ChatError::Failed(why));
        }
        if !self.worker.is_running() {
            return Err(ChatError::Closed("this ChatUdpServer"));
        }
        let max = protocol::max_payload(&to.unwrap_or(self.local)) - self.trailer;
        if data.len() > max {
            return Err(ChatError::TooLong { len: data.len(), max });
        }
        let mut commands = self.shared.commands.lock();
        if commands.sends.len() >= MAX_QUEUED_SENDS || commands.queued_bytes + data.len() > MAX_QUEUED_BYTES {
            return Err(ChatError::Io(std::io::Error::from_raw_os_error(libc::EAGAIN)));
        }
        commands.queued_bytes += data.len();
        commands.sends.push_back((data.to_vec(), to));
        drop(commands);
        self.shared.sends_pending.store(true, Ordering::Release);
        self.wake_leader();
        Ok(())
    }

    fn wake_leader(&self) {
        if let Some(waker) = self.leader.lock().as_ref() {
            waker.wake();
        }
    }

    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// The bus's counters and the other relays of the room; `None` without a bus.
    pub fn bus(&self) -> Option<&BusStatus> {
        self.bus.as_ref()
    }

    /// Joins, leaves and chat messages, in the order the socket thread saw them.
    pub fn events(&self) -> &EventReceiver {
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

    fn event_queue(&self) -> Option<&EventReceiver> {
        Some(&self.events)
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn stop(&self) {
        self.worker.stop();
        // The leader's poller closes once every handle to its waker is gone.
        self.leader.lock().take();
    }
}

/// One chat message the act stage relayed, as every [`Sink`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Relayed<'a> {
    /// The message as received (cut to `bufsize`, trailer removed).
    pub payload: &'a [u8],
    pub from: SocketAddr,
    /// The Ack the local clients are sent (unsealed).
    pub ack: &'a [u8],
    /// The live clients of this server's table the Ack goes to, the sender included.
    pub live: &'a [SocketAddr],
}

/// A destination of relayed chat messages besides the local clients: the seam of the act
/// stage (see [the pipeline](self#where-to-plug-in-sink)). Runs on the socket thread, so
/// it must not block: queue, and send in [`flush`](Sink::flush).
pub trait Sink: Send {
    /// Takes one relayed message.
    fn relay(&mut self, message: &Relayed<'_>, counters: &Counters);

    /// End of a receive batch (the local Acks are sent): send what was queued.
    fn flush(&mut self, _counters: &Counters) {}
}

/// Where the act stage sends a chat message: the Ack to the local live clients, then every
/// extra sink.
struct Fanout {
    local: Outbox,
    sinks: Vec<Box<dyn Sink>>,
    ack: Vec<u8>,
}

impl Fanout {
    fn relay(&mut self, payload: &[u8], from: SocketAddr, live: &[SocketAddr], counters: &Counters) {
        protocol::write_ack(payload, &from, &mut self.ack);
        self.local.queue(&self.ack, live);
        let message = Relayed { payload, from, ack: &self.ack, live };
        for sink in &mut self.sinks {
            sink.relay(&message, counters);
        }
    }

    /// The Acks of the whole batch go out first, in as few calls as possible; then the sinks.
    fn flush(&mut self, counters: &Counters) {
        self.local.flush(counters);
        for sink in &mut self.sinks {
            sink.flush(counters);
        }
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
        self.icmp_seen |= report.deferred_errors > 0 || self.batch.has_unreachable();
    }

    fn send(&mut self, payload: &[u8], to: &[SocketAddr], counters: &Counters) {
        self.queue(payload, to);
        self.flush(counters);
    }
}

/// Stage 1: who may talk. The `allow` list, then the authentication trailer.
struct Filter {
    allow: Vec<Network>,
    opener: Option<Arc<Mutex<Opener>>>,
}

impl Filter {
    /// The payload to go on with (trailer removed), or why the datagram is dropped.
    fn pass<'a>(&mut self, data: &'a [u8], from: SocketAddr, now: f64) -> std::result::Result<&'a [u8], Refusal> {
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(from.ip())) {
            return Err(Refusal::Drop(DropReason::NotAllowed));
        }
        match &mut self.opener {
            Some(opener) => opener.lock().open(data, now).map_err(Refusal::Sealed),
            None => Ok(data),
        }
    }
}

/// Stage 2, first half: with `validate=True`, a source not in the table must echo a cookie
/// before anything it sends is looked at. Its chat messages wait for the echo in a bounded
/// hold queue, so a client's first messages are not lost to the challenge round trip.
struct Admission {
    cookies: Option<Arc<CookieJar>>,
    /// One hold queue for every worker, like the cookie key.
    held: Arc<Mutex<HoldQueue>>,
}

/// What [`Admission::check`] decided.
enum Admitted {
    /// Go on to the table.
    Pass,
    /// The datagram was a valid cookie echo: its source is admitted like a heartbeat, and the
    /// messages held for it go on to the table.
    Echo,
    /// A chat message from a source not validated yet: hold it and send this challenge, if any.
    Hold(Option<Vec<u8>>),
    /// Refused; answer with this challenge, if any.
    Refused(Option<Vec<u8>>),
    /// A member sent something shaped like a cookie echo that is none: not chat, dropped.
    NotChat,
}

impl Admission {
    fn check(&self, relay: &Relay, payload: &[u8], from: SocketAddr, now: f64, received: usize) -> Admitted {
        let Some(cookies) = &self.cookies else { return Admitted::Pass };
        let echo = auth::is_challenge(payload) && cookies.is_valid_echo(payload, &from, now);
        if echo {
            Admitted::Echo
        } else if relay.contains(&from) {
            // A cookie echo is protocol, never chat, whoever sends it.
            if auth::is_challenge(payload) {
                Admitted::NotChat
            } else {
                Admitted::Pass
            }
        } else {
            match protocol::classify(payload) {
                protocol::Kind::Quit => Admitted::Refused(None),
                protocol::Kind::Heartbeat => Admitted::Refused(cookies.challenge(&from, now, received)),
                protocol::Kind::Chat if auth::is_challenge(payload) => Admitted::Refused(None),
                protocol::Kind::Chat => Admitted::Hold(cookies.challenge(&from, now, received)),
            }
        }
    }
}

/// Why a stage refused a datagram.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Drop(DropReason),
    /// The authentication trailer did not verify (counted as [`DropReason::Auth`] too).
    Sealed(Refused),
}

impl From<DropReason> for Refusal {
    fn from(reason: DropReason) -> Refusal {
        Refusal::Drop(reason)
    }
}

/// Stage 4: counters and events, handed to the consumer once the batch's Acks are sent.
struct Handover {
    events: EventSender,
    /// Events of the batch being handled.
    pending: Vec<Event>,
}

impl Handover {
    fn join(&mut self, from: SocketAddr, counters: &Counters) {
        Counters::add(&counters.joins, 1);
        self.pending.push(Event::Join(from));
    }

    fn leave(&mut self, addr: SocketAddr, reason: LeaveReason, counters: &Counters) {
        let counter = match reason {
            LeaveReason::Quit | LeaveReason::Removed => None,
            LeaveReason::Expired => Some(&counters.expired),
            LeaveReason::Unreachable => Some(&counters.unreachable),
        };
        if let Some(counter) = counter {
            Counters::add(counter, 1);
        }
        Counters::add(&counters.leaves, 1);
        self.pending.push(Event::Leave(addr, reason));
    }

    /// The leaves of the clients the owner removed; called with the table locked, so they come
    /// before any event of a datagram that brings such a client back.
    /// Called with the table locked, as the removals were made.
    fn removed(&mut self, shared: &Shared, counters: &Counters) {
        if !shared.removals_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut commands = shared.commands.lock();
        for addr in commands.removed.drain(..) {
            self.leave(addr, LeaveReason::Removed, counters);
        }
    }

    fn expired(&mut self, gone: &[SocketAddr], counters: &Counters) {
        for addr in gone {
            self.leave(*addr, LeaveReason::Expired, counters);
        }
    }

    /// Counts a refused datagram; refusals a server owner acts on (`on_reject`) are reported.
    fn refuse(&mut self, from: SocketAddr, refusal: impl Into<Refusal>, counters: &Counters) {
        match refusal.into() {
            Refusal::Drop(reason @ (DropReason::NotAllowed | DropReason::TableFull)) => {
                counters.drop_one(reason);
                self.pending.push(Event::Reject(from, reason));
            }
            Refusal::Drop(reason) => counters.drop_one(reason),
            Refusal::Sealed(why) => counters.refuse(why),
        }
    }

    fn message(&mut self, payload: &[u8], from: SocketAddr, counters: &Counters) {
        Counters::add(&counters.relayed, 1);
        // Built only when a consumer asked for messages (a callback, a log line, the backlog).
        if self.events.wants_messages() {
            self.pending.push(Event::Message { data: payload.to_vec(), from });
        }
    }

    fn flush(&mut self, counters: &Counters) {
        if !self.pending.is_empty() {
            self.events.emit_all(self.pending.drain(..), counters);
        }
    }
}

struct RelayLoop {
    /// The leader's: the bus, when this relay has one, to Ack what other relays of the room
    /// published (dropped with the leader, after every follower has ended).
    bus: Option<Bus>,
    socket: Arc<Socket>,
    waiter: Waiter,
    shared: Arc<Shared>,
    recv: RecvBatch,
    filter: Filter,
    admission: Admission,
    fanout: Fanout,
    handover: Handover,
    live: Vec<SocketAddr>,
    gone: Vec<SocketAddr>,
    max_age: f64,
    /// ICMP errors are queued on the socket (see `ServerConfig::drop_unreachable`).
    error_queue: bool,
}

/// What every socket thread of one server shares, and what each hands its results to.
struct Group {
    shared: Arc<Shared>,
    events: EventSender,
    sinks: Vec<Box<dyn Sink>>,
    /// The sockets of the group whose ICMP errors are queued (`drop_unreachable`); empty when
    /// none are.
    error_queues: Vec<Arc<Socket>>,
}

/// Runs the leader's loop on this thread and every other worker's loop on a thread of its own,
/// and returns once all have finished. Only the leader sweeps the table and says `Bye!`, so each
/// client hears it once. `ready` hears when every thread runs, or why one could not start.
fn run_group(
    leader: &mut RelayLoop,
    followers: Vec<RelayLoop>,
    wakers: Vec<net::Waker>,
    control: &Control,
    ready: crossbeam_channel::Sender<std::io::Result<()>>,
) {
    // Set when the leader ends for any reason, so no follower outlives it.
    let group_done = AtomicBool::new(false);
    let (started, follower_started) = crossbeam_channel::unbounded();
    std::thread::scope(|scope| {
        let mut running = Vec::with_capacity(followers.len());
        let mut outcome = Ok(());
        for (index, mut follower) in followers.into_iter().enumerate() {
            let (group_done, started) = (&group_done, started.clone());
            let name = format!("chatudp-server{}", index + 1);
            let spawned = std::thread::Builder::new().name(name).spawn_scoped(scope, move || {
                let _ = started.send(());
                follower.serve(control, group_done, None);
            });
            match spawned {
                Ok(handle) => running.push(handle),
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            for _ in 0..running.len() {
                let _ = follower_started.recv();
            }
        }
        let failed = outcome.is_err();
        let _ = ready.send(outcome);
        if !failed {
            leader.serve_until_stopped(control, &group_done);
        }
        group_done.store(true, Ordering::Release);
        for waker in &wakers {
            waker.wake();
        }
        // Bye! only once no follower can send an Ack any more, so it is each client's last word.
        for follower in running {
            let _ = follower.join();
        }
        if !failed {
            leader.finish();
        }
    });
}

/// What the stages after the filter work on, for one batch: the locked table and the loop's
/// buffers.
struct Stages<'a> {
    relay: &'a mut Relay,
    now: f64,
    live: &'a mut Vec<SocketAddr>,
    /// The clients the table found silent on the way, for the hand-over.
    gone: &'a mut Vec<SocketAddr>,
    fanout: &'a mut Fanout,
    handover: &'a mut Handover,
    counters: &'a Counters,
}

impl Stages<'_> {
    /// Stage 2: the cookie, then the table and its limits; what passes is acted on. Then stage
    /// 4, the hand-over: clients found silent on the way leave.
    fn admit(&mut self, admission: &Admission, payload: &[u8], from: SocketAddr, received: usize) {
        self.gone.clear();
        match admission.check(self.relay, payload, from, self.now, received) {
            Admitted::Pass => self.act(payload, from),
            Admitted::Echo => self.validated(admission, from),
            Admitted::Hold(challenge) => self.hold(admission, payload, from, challenge),
            Admitted::Refused(challenge) => self.refuse_newcomer(from, challenge),
            Admitted::NotChat => self.handover.refuse(from, DropReason::Auth, self.counters),
        }
        self.handover.expired(self.gone, self.counters);
    }

    /// Stage 3: what a datagram admitted to the table does. Each outcome is matched here once.
    fn act(&mut self, payload: &[u8], from: SocketAddr) {
        let (counters, handover) = (self.counters, &mut *self.handover);
        let outcome = self.relay.on_datagram(payload, from, self.now, self.live, self.gone);
        if outcome.joined() {
            handover.join(from, counters);
        }
        match outcome {
            Outcome::Heartbeat { .. } => Counters::add(&counters.heartbeats, 1),
            Outcome::Quit { left: true } => handover.leave(from, LeaveReason::Quit, counters),
            Outcome::Quit { left: false } => {}
            Outcome::RateLimited { .. } => handover.refuse(from, DropReason::Rate, counters),
            Outcome::TableFull => handover.refuse(from, DropReason::TableFull, counters),
            Outcome::Chat { .. } => {
                self.fanout.relay(payload, from, self.live, counters);
                handover.message(payload, from, counters);
            }
        }
    }

    /// A valid cookie echo: its source joins like a heartbeat would make it, and the messages it
    /// sent while its challenge was in flight go on, in order.
    fn validated(&mut self, admission: &Admission, from: SocketAddr) {
        let held = admission.held.lock().release(&from);
        match self.relay.refresh(from, self.now, self.gone) {
            relay::Admission::Joined => self.handover.join(from, self.counters),
            relay::Admission::Known => {}
            relay::Admission::TableFull => {
                self.handover.refuse(from, DropReason::TableFull, self.counters);
                self.counters.drop_many(DropReason::Unvalidated, held.len() as u64);
                return;
            }
        }
        for message in &held {
            // Each message's table round finds its own silent clients.
            self.handover.expired(self.gone, self.counters);
            self.gone.clear();
            self.act(message, from);
        }
    }

    /// A chat message from a source not validated yet: held, and its challenge sent, if the
    /// table has room for the source.
    fn hold(&mut self, admission: &Admission, payload: &[u8], from: SocketAddr, challenge: Option<Vec<u8>>) {
        if !self.challenge_if_room(from, challenge) {
            self.handover.refuse(from, DropReason::TableFull, self.counters);
            return;
        }
        let dropped = admission.held.lock().hold(from, payload, self.now);
        self.counters.drop_many(DropReason::Unvalidated, dropped as u64);
    }

    /// A newcomer the table has no room for is refused as such, unchallenged; one it has room
    /// for is refused until it validates, and challenged.
    fn refuse_newcomer(&mut self, from: SocketAddr, challenge: Option<Vec<u8>>) {
        let reason = if self.challenge_if_room(from, challenge) { DropReason::Auth } else { DropReason::TableFull };
        self.handover.refuse(from, reason, self.counters);
    }

    /// Sends a newcomer its challenge, if any, when the table has room for it; false when not.
    fn challenge_if_room(&mut self, from: SocketAddr, challenge: Option<Vec<u8>>) -> bool {
        if !self.relay.make_room(self.now, self.gone) {
            return false;
        }
        if let Some(challenge) = challenge {
            self.fanout.local.queue(&challenge, &[from]);
        }
        true
    }
}

impl RelayLoop {
    fn new(
        config: &ServerConfig,
        socket: Arc<Socket>,
        waiter: Waiter,
        filter: Filter,
        admission: Admission,
        group: Group,
    ) -> RelayLoop {
        // `bufsize` counts payload bytes: in authenticated mode the trailer comes on top.
        let error_queue = !group.error_queues.is_empty();
        let recv_len = config.bufsize + if config.secret.is_some() { TRAILER_LEN } else { 0 };
        let recv = RecvBatch::new(RECV_BATCH, recv_len).waking(&waiter);
        RelayLoop {
            bus: None,
            filter,
            admission,
            fanout: Fanout {
                local: Outbox {
                    socket: Arc::clone(&socket),
                    batch: SendBatch::reading_errors(group.error_queues),
                    sealer: config.secret.as_deref().map(|secret| Sealer::new(secret, Direction::ToClient)),
                    sealed: Vec::new(),
                    queued: Outgoing::default(),
                    icmp_seen: false,
                },
                sinks: group.sinks,
                ack: Vec::with_capacity(config.bufsize * 4 + 64),
            },
            handover: Handover { events: group.events, pending: Vec::new() },
            socket,
            waiter,
            shared: group.shared,
            recv,
            live: Vec::new(),
            gone: Vec::new(),
            max_age: config.interval + config.expiry_grace,
            error_queue,
        }
    }

    /// The leader: serves and expires silent clients on its timer until stopped.
    fn serve_until_stopped(&mut self, control: &Control, group_done: &AtomicBool) {
        let mut next_sweep = wall_clock() + self.max_age;
        self.serve(control, group_done, Some(&mut next_sweep));
    }

    /// The leader, once every follower has ended: what the owner sent before `stop()` goes
    /// out, then the `Bye!`.
    fn finish(&mut self) {
        self.run_commands();
        self.say_goodbye();
    }

    /// Reads and relays until stopped; with `next_sweep`, also expires silent clients on time.
    fn serve(&mut self, control: &Control, group_done: &AtomicBool, mut next_sweep: Option<&mut f64>) {
        while !control.is_stopping() && !group_done.load(Ordering::Acquire) {
            let wait = match next_sweep.as_deref() {
                Some(&at) => {
                    Duration::from_secs_f64((at - wall_clock()).clamp(0.0, self.max_age.max(MIN_TIMER_PERIOD)))
                }
                // A follower only waits for datagrams; the leader wakes it to stop.
                None => Duration::from_secs(3600),
            };
            match self.waiter.wait(wait) {
                Ok(true) => self.drain(control),
                Ok(false) => {}
                // A poller that cannot wait any more leaves nothing to do but stop.
                Err(_) => break,
            }
            self.deliver_from_bus();
            self.check_unreachable(false);
            // The leader's own duties: the owner's commands, the expiry timer.
            if let Some(at) = next_sweep.as_deref_mut() {
                self.run_commands();
                let now = wall_clock();
                if now >= *at {
                    *at = self.sweep(now);
                }
            }
        }
    }

    /// Acks the chat messages other relays of the room published to this relay's live clients,
    /// byte for byte as if their senders were here. They go to the local clients only: nothing
    /// from the bus is published again.
    fn deliver_from_bus(&mut self) {
        let Some(bus) = &self.bus else { return };
        let now = wall_clock();
        let relay = self.shared.relay.lock();
        bus.set_clients(relay.len());
        let mut records = bus.drain().peekable();
        if records.peek().is_none() {
            return;
        }
        relay.live(now, &mut self.live);
        drop(relay);
        let out = &mut self.fanout;
        for record in records {
            protocol::write_ack(&record.payload, &record.from, &mut out.ack);
            out.local.queue(&out.ack, &self.live);
        }
        out.local.flush(&self.shared.counters);
    }

    /// The leaves of the clients the owner removed, then the datagrams it sends (leader only:
    /// its socket and sealer send them).
    fn run_commands(&mut self) {
        let shared = &*self.shared;
        if !(shared.sends_pending.load(Ordering::Acquire) || shared.removals_pending.load(Ordering::Acquire)) {
            return; // nothing asked: no lock taken on the leader's way back to its wait
        }
        let counters = &self.shared.counters;
        let relay = self.shared.relay.lock();
        self.handover.removed(&self.shared, counters);
        let sends = if self.shared.sends_pending.swap(false, Ordering::AcqRel) {
            let mut commands = self.shared.commands.lock();
            commands.queued_bytes = 0;
            std::mem::take(&mut commands.sends)
        } else {
            VecDeque::new()
        };
        if sends.iter().any(|(_, to)| to.is_none()) {
            relay.live(wall_clock(), &mut self.live);
        }
        drop(relay);
        for (data, to) in &sends {
            match to {
                Some(to) => self.fanout.local.queue(data, std::slice::from_ref(to)),
                None => self.fanout.local.queue(data, &self.live),
            }
        }
        self.fanout.local.flush(counters);
        self.handover.flush(counters);
    }

    fn drain(&mut self, control: &Control) {
        let mut received = 0;
        // Waiting in the receive, the first read is the wait (see `Waiter::in_receive`).
        let waits_in_receive = self.waiter.wake_source().is_some();
        for round in 0..BATCHES_PER_WAKE {
            if control.is_stopping() {
                return;
            }
            let read = if round == 0 && waits_in_receive {
                self.recv.recv_blocking(&self.socket)
            } else {
                self.recv.recv(&self.socket)
            };
            match read {
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
                Err(e) if net::is_deferred_icmp_error(&e) => self.fanout.local.icmp_seen = true,
                Err(_) => break,
            }
        }
        // A wake-up of the poller with nothing to read reports a queued ICMP error (a blocking
        // receive returns that error instead, which sets `icmp_seen`).
        self.check_unreachable(received == 0 && !waits_in_receive);
    }

    /// Removes the clients the network reported unreachable, when the sends met any (or
    /// `queued` says the error queue has news).
    fn check_unreachable(&mut self, queued: bool) {
        if !self.error_queue || !(queued || self.fanout.local.icmp_seen) {
            return;
        }
        self.fanout.local.icmp_seen = false;
        self.gone.clear();
        // What the sends read from the error queue on the way, then what is left in it.
        self.fanout.local.batch.take_unreachable(&mut self.gone);
        net::drain_unreachable(&self.socket, &mut self.gone);
        if self.gone.is_empty() {
            return;
        }
        let counters = &self.shared.counters;
        let mut relay = self.shared.relay.lock();
        for addr in &self.gone {
            if relay.remove(addr) {
                self.handover.leave(*addr, LeaveReason::Unreachable, counters);
            }
        }
        drop(relay);
        self.handover.flush(counters);
    }

    /// Runs every datagram of the batch through the pipeline: filter, admit, act, hand over;
    /// then sends the batch's Acks and hands its events over.
    fn handle_batch(&mut self, count: usize) {
        let counters = &self.shared.counters;
        counters.count_reads(&self.recv);
        let now = wall_clock();
        let mut relay = self.shared.relay.lock();
        self.handover.removed(&self.shared, counters);
        let mut stages = Stages {
            relay: &mut relay,
            now,
            live: &mut self.live,
            gone: &mut self.gone,
            fanout: &mut self.fanout,
            handover: &mut self.handover,
            counters,
        };
        for index in 0..count {
            let datagram = self.recv.get(index);
            // 1. filter
            match self.filter.pass(datagram.data, datagram.from, now) {
                Ok(payload) => stages.admit(&self.admission, payload, datagram.from, datagram.data.len()),
                Err(reason) => stages.handover.refuse(datagram.from, reason, counters),
            }
        }
        drop(relay);
        // The Acks of the whole batch go out first, in as few calls as possible; the events
        // cost the round trip nothing.
        self.fanout.flush(counters);
        self.handover.flush(counters);
    }

    /// Expires silent clients; returns when to look again.
    fn sweep(&mut self, now: f64) -> f64 {
        let unanswered = self.admission.held.lock().expire(now);
        self.shared.counters.drop_many(DropReason::Unvalidated, unanswered as u64);
        self.gone.clear();
        let next = self.shared.relay.lock().sweep(now, self.max_age, &mut self.gone);
        self.handover.expired(&self.gone, &self.shared.counters);
        self.handover.flush(&self.shared.counters);
        // Never sooner than a small slice of the interval, so a table of many clients with
        // spread-out deadlines is not rescanned continuously.
        let min_gap = (self.max_age / 50.0).clamp(MIN_TIMER_PERIOD, 0.1);
        next.unwrap_or(now + self.max_age).max(now + min_gap)
    }

    fn say_goodbye(&mut self) {
        self.live.clear();
        self.live.extend(self.shared.relay.lock().addresses().copied());
        self.fanout.local.send(BYE, &self.live, &self.shared.counters);
    }
}

/// Senders the replay cache remembers at once: every client of a full table, restarted once
/// within the freshness window, and some room for a small table's churn.
fn replay_cache_size(max_clients: usize) -> usize {
    max_clients.saturating_mul(2).max(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ChatError;
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
        let events: Vec<Event> = server.events().take_queued();
        let a_addr = a.local_addr().unwrap();
        assert_eq!(events, vec![Event::Join(a_addr), Event::Leave(a_addr, LeaveReason::Expired)]);
        assert_eq!(server.stats().expired, 1);
    }

    #[test]
    fn unreachable_clients_leave_at_once() {
        if !net::LINUX_IO {
            // No error queue: a dead client stays until it expires, as in the original.
            return;
        }
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
        let events: Vec<Event> = server.events().take_queued();
        assert!(events.contains(&Event::Leave(dead_addr, LeaveReason::Unreachable)), "{events:?}");
        assert_eq!(server.stats().unreachable, 1);
    }

    #[test]
    fn workers_share_one_table_and_say_bye_once() {
        let mut config = ServerConfig::new("127.0.0.1", 0, 10.0);
        config.workers = 3;
        if !reuseport::supported() {
            let refused = Server::start(config);
            assert!(matches!(refused, Err(ChatError::Io(e)) if e.to_string().contains("workers=1")));
            return;
        }
        let server = Server::start(config).unwrap();
        let clients: Vec<UdpSocket> = (0..12).map(|_| peer()).collect();
        for client in &clients {
            client.send_to(b"^hb^", server.local_addr()).unwrap();
        }
        wait_for("12 clients to join", || server.clients().len() == 12);
        clients[0].send_to(b"hi", server.local_addr()).unwrap();
        let port = clients[0].local_addr().unwrap().port();
        let expected = format!("Ack b'HI'. from 127.0.0.1:{port}").into_bytes();
        for client in &clients {
            assert_eq!(recv(client), expected);
        }
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_millis(500));
        for client in &clients {
            assert_eq!(recv(client), b"Bye!");
            client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            assert!(client.recv(&mut [0u8; 16]).is_err(), "a second Bye!");
        }
        assert_eq!(server.stats().joins, 12);
    }

    #[test]
    fn workers_out_of_range_are_refused() {
        for workers in [0, crate::config::WORKERS.max as usize + 1] {
            let mut config = ServerConfig::new("127.0.0.1", 0, 1.0);
            config.workers = workers;
            assert!(matches!(Server::start(config), Err(ChatError::InvalidArgument(m)) if m.contains("workers")));
        }
    }

    #[test]
    fn messages_wait_for_validation_and_echoes_are_never_chat() {
        let mut config = ServerConfig::new("127.0.0.1", 0, 10.0);
        config.validate = true;
        let server = Server::start(config).unwrap();
        let a = peer();
        a.send_to(b"hello", server.local_addr()).unwrap();
        a.send_to(b"world", server.local_addr()).unwrap();
        let challenge = recv(&a);
        assert!(crate::auth::is_challenge(&challenge));
        assert_eq!(recv(&a), challenge);
        assert!(server.clients().is_empty());
        a.send_to(&challenge, server.local_addr()).unwrap();
        let port = a.local_addr().unwrap().port();
        assert_eq!(recv(&a), format!("Ack b'HELLO'. from 127.0.0.1:{port}").into_bytes());
        assert_eq!(recv(&a), format!("Ack b'WORLD'. from 127.0.0.1:{port}").into_bytes());
        // A second echo, then a message: only the message is relayed.
        a.send_to(&challenge, server.local_addr()).unwrap();
        a.send_to(b"three", server.local_addr()).unwrap();
        assert_eq!(recv(&a), format!("Ack b'THREE'. from 127.0.0.1:{port}").into_bytes());
        let stats = server.stats();
        assert_eq!((stats.relayed, stats.joins, stats.dropped(DropReason::Unvalidated)), (3, 1, 0));
    }

    #[test]
    fn removed_clients_leave_once_and_hear_nothing_more() {
        let server = start(10.0);
        let (a, b) = (peer(), peer());
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        a.send_to(b"^hb^", server.local_addr()).unwrap();
        b.send_to(b"^hb^", server.local_addr()).unwrap();
        wait_for("both to join", || server.clients().len() == 2);
        assert!(server.remove(&a_addr));
        assert!(!server.remove(&a_addr));
        assert_eq!(server.last_seen(&a_addr), None);
        assert!(server.last_seen(&b_addr).is_some());
        b.send_to(b"hi", server.local_addr()).unwrap();
        assert_eq!(recv(&b), format!("Ack b'HI'. from 127.0.0.1:{}", b_addr.port()).into_bytes());
        assert_eq!(server.clear(), 1);
        wait_for("the leaves", || server.stats().leaves == 2);
        server.stop();
        a.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(a.recv(&mut [0u8; 64]).is_err(), "a removed client heard from the server");
        let leaves: Vec<Event> =
            server.events().take_queued().into_iter().filter(|e| matches!(e, Event::Leave(..))).collect();
        assert_eq!(
            leaves,
            vec![Event::Leave(a_addr, LeaveReason::Removed), Event::Leave(b_addr, LeaveReason::Removed)]
        );
    }

    #[test]
    fn the_owner_sends_to_one_address_and_to_every_live_client() {
        let mut config = ServerConfig::new("127.0.0.1", 0, 10.0);
        // Two workers where the platform has them: the owner's sends go through the leader.
        config.workers = if reuseport::supported() { 2 } else { 1 };
        let server = Server::start(config).unwrap();
        let (a, b, outsider) = (peer(), peer(), peer());
        for client in [&a, &b] {
            client.send_to(b"^hb^", server.local_addr()).unwrap();
        }
        wait_for("both to join", || server.clients().len() == 2);
        server.broadcast(b"news").unwrap();
        server.send_to(b"direct", outsider.local_addr().unwrap()).unwrap();
        assert_eq!((recv(&a), recv(&b), recv(&outsider)), (b"news".to_vec(), b"news".to_vec(), b"direct".to_vec()));
        wait_for("the sends to be counted", || server.stats().sent == 3);
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert!(matches!(server.send_to(b"x", v6), Err(ChatError::InvalidArgument(m)) if m.contains("IPv6")));
        assert!(matches!(server.broadcast(&[0; 70_000]), Err(ChatError::TooLong { .. })));
        server.stop();
        assert!(matches!(server.broadcast(b"late"), Err(ChatError::Closed(_))));
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
        config.bufsize = crate::protocol::MAX_DATAGRAM + 1;
        assert!(matches!(Server::start(config), Err(ChatError::InvalidArgument(_))));
        let first = start(1.0);
        let busy = Server::start(ServerConfig::new("127.0.0.1", first.local_addr().port(), 1.0));
        assert!(matches!(busy, Err(ChatError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse));
    }
}
