//! The group-chat client: a socket connected to the server, one thread that receives and sends
//! the heartbeat every `interval` seconds, and `send` callable from any thread.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use socket2::Socket;

use crate::auth::{self, Direction, Opener, Sealer, TRAILER_LEN};
pub use crate::config::ClientConfig;
use crate::config::RECV_BATCH;
use crate::error::{ChatError, Result};
use crate::events::{self, Event, EventReceiver, EventSender};
use crate::net::{self, RecvBatch, Waiter};
use crate::protocol::{self, HEARTBEAT, MAX_DATAGRAM};
use crate::stats::{Counters, Stats};
use crate::worker::{wall_clock, Control, Endpoint, Worker, MIN_TIMER_PERIOD};

struct Shared {
    /// `None` once stopped: `stop()` closes the socket, as the original does.
    socket: RwLock<Option<Arc<Socket>>>,
    counters: Counters,
    sealer: Option<Mutex<Sealer>>,
    /// The longest message `send` takes: a datagram in plain mode; in authenticated mode
    /// `bufsize`, since the server (with the same `bufsize`) would have to cut a longer one,
    /// and a cut datagram cannot be verified.
    max_message: usize,
}

/// A running chat client. Dropping it stops it.
pub struct Client {
    shared: Arc<Shared>,
    local: SocketAddr,
    remote: SocketAddr,
    events: EventReceiver,
    worker: Worker,
}

impl Client {
    /// Connects to the server and starts the receive and heartbeat thread.
    pub fn start(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let remote = net::resolve(&config.host, config.port)?;
        let unspecified: SocketAddr =
            if remote.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = net::udp_socket(unspecified, false, config.socket)?;
        socket.connect(&remote.into())?;
        let socket = Arc::new(socket);
        let local = net::local_addr(&socket)?;
        let (waiter, waker) = Waiter::new(&socket)?;
        let (sender, events) = events::channel(config.queue_size, config.route);
        let now = wall_clock();
        let secret = config.secret.is_some();
        let shared = Arc::new(Shared {
            socket: RwLock::new(Some(Arc::clone(&socket))),
            counters: Counters::default(),
            sealer: config.secret.as_deref().map(|secret| Mutex::new(Sealer::new(secret, Direction::ToServer))),
            max_message: if secret {
                config.bufsize.min(MAX_DATAGRAM - TRAILER_LEN)
            } else {
                protocol::max_payload(&remote)
            },
        });
        let mut client_loop = ClientLoop {
            socket,
            shared: Arc::clone(&shared),
            waiter,
            events: sender,
            recv: RecvBatch::new(RECV_BATCH, if secret { sealed_recv_len(config.bufsize) } else { config.bufsize }),
            bufsize: config.bufsize,
            // A floor, so a tiny interval cannot make the loop spin.
            interval: Duration::from_secs_f64(config.interval.max(MIN_TIMER_PERIOD)),
            announce: config.announce,
            opener: config
                .secret
                .as_deref()
                .map(|secret| Opener::new(secret, Direction::ToClient, now, SERVER_SENDERS)),
        };
        let worker = Worker::spawn("chatudp-client", waker, move |control| client_loop.run(control))?;
        Ok(Client { shared, local, remote, events, worker })
    }

    /// Sends one datagram to the server. An unreachable server is counted, not raised, as UDP
    /// gives no promise of delivery anyway.
    pub fn send(&self, data: &[u8]) -> Result<()> {
        if let Some(why) = self.worker.failure() {
            return Err(ChatError::Failed(why));
        }
        if !self.worker.is_running() {
            return Err(ChatError::Closed("this ChatUdpClient"));
        }
        let max = protocol::max_payload(&self.remote);
        if data.len() > max {
            return Err(ChatError::TooLong { len: data.len(), max });
        }
        if data.len() > self.shared.max_message {
            return Err(ChatError::Undeliverable {
                len: data.len(),
                max: self.shared.max_message,
                why: "in authenticated mode the server cannot verify a datagram longer than its bufsize (cut on \
                      receipt) nor one beyond a UDP datagram with the trailer; split it, or raise bufsize on both ends",
            });
        }
        let socket = self.shared.socket.read().clone().ok_or(ChatError::Closed("this ChatUdpClient"))?;
        send_counted(&self.shared, &socket, data).map_err(ChatError::Io)
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Received datagrams, as [`Event::Message`].
    pub fn events(&self) -> &EventReceiver {
        &self.events
    }
}

impl Endpoint for Client {
    fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Ends the thread and closes the socket.
    fn stop(&self) {
        if self.worker.is_forked_copy() {
            return;
        }
        self.worker.stop();
        self.shared.socket.write().take();
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
}

fn send_counted(shared: &Shared, socket: &Socket, data: &[u8]) -> io::Result<()> {
    let mut sealed = Vec::new();
    let wire = match &shared.sealer {
        Some(sealer) => {
            sealer.lock().seal(data, wall_clock(), &mut sealed);
            &sealed[..]
        }
        None => data,
    };
    match net::send_one(socket, wire, None) {
        Ok(_) => {
            Counters::add(&shared.counters.sent, 1);
            Ok(())
        }
        // The server's port is closed (an ICMP report on this connected socket), or the send
        // buffer stayed full: UDP promises nothing, so count it and go on.
        Err(e) if net::is_deferred_icmp_error(&e) || e.kind() == io::ErrorKind::WouldBlock => {
            if net::is_deferred_icmp_error(&e) {
                Counters::add(&shared.counters.unreachable, 1);
            }
            shared.counters.send_failed(e.raw_os_error().unwrap_or(0));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Server instances a client remembers within the freshness window (a restarted server is a
/// new sender).
const SERVER_SENDERS: usize = 64;
/// The longest Ack text beyond the repr of the data: `Ack b''. from ` and the longest host
/// and port (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255:65535`), rounded up.
const ACK_OVERHEAD: usize = 72;

/// What an authenticated client reads per datagram: the Ack of any message of `bufsize` bytes
/// (each byte at most 4 in the repr) and its trailer, so the whole datagram can be verified
/// before its payload is cut at `bufsize`, as plain mode cuts it.
fn sealed_recv_len(bufsize: usize) -> usize {
    (bufsize.saturating_mul(4) + ACK_OVERHEAD).min(MAX_DATAGRAM) + TRAILER_LEN
}

struct ClientLoop {
    socket: Arc<Socket>,
    shared: Arc<Shared>,
    waiter: Waiter,
    events: EventSender,
    recv: RecvBatch,
    /// Payload bytes delivered per datagram.
    bufsize: usize,
    interval: Duration,
    /// The first heartbeat goes out at once instead of after `interval`.
    announce: bool,
    opener: Option<Opener>,
}

impl ClientLoop {
    fn run(&mut self, control: &Control) {
        let mut next_heartbeat = if self.announce { Instant::now() } else { Instant::now() + self.interval };
        while !control.is_stopping() {
            let wait = next_heartbeat.saturating_duration_since(Instant::now());
            match self.waiter.wait(wait) {
                Ok(true) => self.drain(control),
                Ok(false) => {}
                Err(_) => break,
            }
            if Instant::now() >= next_heartbeat && !control.is_stopping() {
                // Errors other than an absent server are counted too: the loop must go on.
                if let Err(e) = send_counted(&self.shared, &self.socket, HEARTBEAT) {
                    self.shared.counters.send_failed(e.raw_os_error().unwrap_or(0));
                }
                next_heartbeat += self.interval;
                // After a long stall, do not fire a burst of late heartbeats.
                next_heartbeat = next_heartbeat.max(Instant::now());
            }
        }
    }

    fn drain(&mut self, control: &Control) {
        let counters = &self.shared.counters;
        while !control.is_stopping() {
            match self.recv.recv(&self.socket) {
                Ok(0) => return,
                Ok(count) => {
                    counters.count_reads(&self.recv);
                    let now = wall_clock();
                    for index in 0..count {
                        let datagram = self.recv.get(index);
                        let payload = match &mut self.opener {
                            Some(opener) => match opener.open(datagram.data, now) {
                                // Verified whole, then cut as plain mode cuts at `bufsize`.
                                Ok(payload) if payload.len() > self.bufsize => {
                                    Counters::add(&counters.truncated, 1);
                                    &payload[..self.bufsize]
                                }
                                Ok(payload) => payload,
                                Err(why) => {
                                    counters.refuse(why);
                                    continue;
                                }
                            },
                            None => datagram.data,
                        };
                        // An address-validation challenge: echo the cookie. The server holds
                        // the messages sent meanwhile and relays them once it has the echo.
                        if auth::is_challenge(payload) {
                            let _ = send_counted(&self.shared, &self.socket, payload);
                            continue;
                        }
                        Counters::add(&counters.relayed, 1);
                        if self.events.wants_messages() {
                            self.events.emit(Event::Message { data: payload.to_vec(), from: datagram.from }, counters);
                        }
                    }
                    if count < RECV_BATCH {
                        return;
                    }
                }
                Err(e) => {
                    // The server's port is closed: count it and keep listening.
                    if net::is_deferred_icmp_error(&e) {
                        Counters::add(&counters.unreachable, 1);
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn fake_server() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        socket
    }

    fn start(server: &UdpSocket, interval: f64) -> Client {
        let port = server.local_addr().unwrap().port();
        Client::start(ClientConfig::new("127.0.0.1", port, interval)).unwrap()
    }

    #[test]
    fn sends_messages_and_heartbeats_and_receives() {
        let server = fake_server();
        let client = start(&server, 0.05);
        client.send(b"hello").unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hello"[..], client.local_addr()));
        let (n, _) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"^hb^");
        server.send_to(b"Ack", from).unwrap();
        let batch = client.events().next_batch(1, Duration::ZERO, Duration::from_secs(3));
        let expected = Event::Message { data: b"Ack".to_vec(), from: server.local_addr().unwrap() };
        assert_eq!(batch, events::Batch::Events(vec![expected], false));
        client.stop();
        assert!(matches!(client.send(b"late"), Err(ChatError::Closed(_))));
    }

    #[test]
    fn announce_sends_the_first_heartbeat_at_start() {
        let server = fake_server();
        let port = server.local_addr().unwrap().port();
        let mut config = ClientConfig::new("127.0.0.1", port, 1e6);
        config.announce = true;
        let client = Client::start(config).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"^hb^"[..], client.local_addr()));
        // Without it the first heartbeat waits `interval` seconds, as the tutorial's does.
        let quiet = start(&server, 1e6);
        server.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert!(server.recv_from(&mut buf).is_err());
        quiet.stop();
        client.stop();
    }

    #[test]
    fn survives_a_closed_server_port() {
        let server = fake_server();
        let client = start(&server, 0.02);
        drop(server);
        for _ in 0..20 {
            client.send(b"anyone?").unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(client.is_running());
        // The ICMP reports reach either a send or the receive loop, whichever asks first.
        assert!(client.stats().unreachable > 0);
        assert!(matches!(client.send(&vec![0; MAX_DATAGRAM + 1]), Err(ChatError::TooLong { .. })));
    }
}
