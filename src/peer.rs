//! A request/response UDP endpoint for the tutorial's clients (echo, time, "QQ"): a socket that
//! is not connected, so it can talk to any address, with receives that wait at most a timeout
//! and wake at once when the peer is closed from another thread.
//!
//! The seed's clients block in `recvfrom` forever when a datagram is lost; [`UdpPeer::request`]
//! resends after `timeout` up to `retries` more times, then gives up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use socket2::Socket;

use crate::auth;
use crate::config::BUFSIZE;
use crate::error::{ChatError, Result};
use crate::net::{self, RecvBatch, SocketOptions, Waiter, Waker};
use crate::stats::{Counters, DropReason};

/// What the receiving side owns; dropped by `close()`, which closes the socket.
struct RecvSide {
    // Field order is drop order: the waiter goes before the socket it watches.
    waiter: Waiter,
    batch: RecvBatch,
    socket: Arc<Socket>,
}

/// A point-in-time copy of a peer's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Datagrams read from the socket.
    pub received: u64,
    /// Datagrams the kernel accepted for sending (first tries and resends).
    pub sent: u64,
    /// Requests sent again because no reply came within the timeout.
    pub retries: u64,
    /// Datagrams longer than `bufsize`, cut as `recvfrom(bufsize)` cuts them.
    pub truncated: u64,
    /// Datagrams thrown away by a request: from another address, or stale replies that were
    /// already waiting when the request was sent.
    pub ignored: u64,
    /// Failed sends.
    pub send_errors: u64,
    /// Address-validation challenges answered (a server with `validate=True`).
    pub challenges: u64,
    /// Reports that a destination's port is closed (ICMP port unreachable), read from the
    /// socket's error queue: request clients only, which talk to one server.
    pub refused: u64,
}

/// A non-connected UDP socket for request/response clients. Every method takes `&self`: one
/// thread may wait in [`recv_from`](UdpPeer::recv_from) while another sends or closes.
pub struct UdpPeer {
    local: SocketAddr,
    closed: AtomicBool,
    waker: Waker,
    recv: Mutex<Option<RecvSide>>,
    send: RwLock<Option<Arc<Socket>>>,
    counters: Counters,
    retries: AtomicU64,
    ignored: AtomicU64,
    challenges: AtomicU64,
    refused: AtomicU64,
    /// The kernel queues ICMP errors for this socket (`IP_RECVERR`), read by `note_reports`.
    error_queue: bool,
}

const CLOSED: &str = "this peer";

impl UdpPeer {
    /// Binds to `local` (port 0 picks a free port); datagrams longer than `bufsize` are cut.
    pub fn bind(local: SocketAddr, bufsize: usize, options: SocketOptions) -> Result<UdpPeer> {
        UdpPeer::bind_with(local, bufsize, options, false)
    }

    fn bind_with(local: SocketAddr, bufsize: usize, options: SocketOptions, error_queue: bool) -> Result<UdpPeer> {
        BUFSIZE.check_usize(bufsize)?;
        let socket = net::udp_socket(local, true, options)?;
        let error_queue = error_queue && net::enable_error_queue(&socket, local.is_ipv6())?;
        let socket = Arc::new(socket);
        let local = net::local_addr(&socket)?;
        let (waiter, waker) = Waiter::new(&socket)?;
        Ok(UdpPeer {
            local,
            closed: AtomicBool::new(false),
            waker,
            recv: Mutex::new(Some(RecvSide { waiter, batch: RecvBatch::new(1, bufsize), socket: Arc::clone(&socket) })),
            send: RwLock::new(Some(socket)),
            counters: Counters::default(),
            retries: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            challenges: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            error_queue,
        })
    }

    /// Binds to a free port on every address of `remote`'s family, ready to talk to `remote`.
    /// The kernel's reports of a closed port are read and counted (`refused`), so that a request
    /// nobody answered can say whether the server's port was closed.
    pub fn for_remote(remote: SocketAddr, bufsize: usize, options: SocketOptions) -> Result<UdpPeer> {
        let any = match remote.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        UdpPeer::bind_with(SocketAddr::new(any, 0), bufsize, options, true)
    }

    /// Reads the error queue (when enabled), counting the closed ports it reports. Called
    /// whenever the socket may hold an error: else its POLLERR would keep waking the waiter.
    fn note_reports(&self, socket: &Socket) {
        if self.error_queue {
            let mut closed = Vec::new();
            net::drain_unreachable(socket, &mut closed);
            self.refused.fetch_add(closed.len() as u64, Ordering::Relaxed);
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends one datagram to `to`, as `socket.sendto`.
    pub fn send_to(&self, data: &[u8], to: SocketAddr) -> Result<()> {
        let max = crate::protocol::max_payload(&to);
        if data.len() > max {
            return Err(ChatError::TooLong { len: data.len(), max });
        }
        let send = self.send.read();
        let socket = send.as_ref().ok_or(ChatError::Closed(CLOSED))?;
        let mut sent = net::send_one(socket, data, Some(to));
        if matches!(&sent, Err(e) if self.error_queue && net::is_deferred_icmp_error(e)) {
            // The error is an ICMP report about an earlier datagram, handed to this send (which
            // did not go out): read the report and send again.
            self.note_reports(socket);
            sent = net::send_one(socket, data, Some(to));
        }
        match sent {
            Ok(_) => {
                Counters::add(&self.counters.sent, 1);
                Ok(())
            }
            Err(e) => {
                self.counters.send_failed(e.raw_os_error().unwrap_or(0));
                Err(ChatError::Io(e))
            }
        }
    }

    /// Waits at most `timeout` for one datagram from anyone; `None` when none came.
    /// `close()` from another thread ends the wait with [`ChatError::Closed`].
    pub fn recv_from(&self, timeout: Duration) -> Result<Option<(Vec<u8>, SocketAddr)>> {
        self.recv_matching(deadline_after(timeout), None)
    }

    /// Sends `data` to `to` and waits for a reply from `to`; resends after each `timeout` up to
    /// `retries` more times; `None` when no reply came. Datagrams from other addresses, and
    /// replies that were already waiting before the request was sent, are ignored (counted).
    pub fn request(
        &self,
        data: &[u8],
        to: SocketAddr,
        timeout: Duration,
        retries: u32,
    ) -> Result<Option<(Vec<u8>, SocketAddr)>> {
        let mut request = Request::start(self, data, to, timeout, retries)?;
        loop {
            match request.poll(self, timeout)? {
                RequestPoll::Reply(data, from) => return Ok(Some((data, from))),
                RequestPoll::NoReply => return Ok(None),
                RequestPoll::Pending => {}
            }
        }
    }

    /// Closes the socket, waking any thread waiting in a receive. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
        // The receiver sees the flag and lets go of the lock promptly.
        drop(self.recv.lock().take());
        drop(self.send.write().take());
    }

    pub fn stats(&self) -> PeerStats {
        let base = self.counters.snapshot();
        PeerStats {
            received: base.received,
            sent: base.sent,
            retries: self.retries.load(Ordering::Relaxed),
            truncated: base.truncated,
            ignored: self.ignored.load(Ordering::Relaxed),
            send_errors: base.dropped(DropReason::SendError),
            challenges: self.challenges.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Throws away what is already queued (late replies to an earlier request).
    fn discard_pending(&self) -> Result<()> {
        let mut recv = self.recv.lock();
        let side = recv.as_mut().ok_or(ChatError::Closed(CLOSED))?;
        loop {
            match side.batch.recv(&side.socket) {
                Ok(0) => {
                    self.note_reports(&side.socket);
                    return Ok(());
                }
                Ok(n) => {
                    Counters::add(&self.counters.received, n as u64);
                    self.ignored.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if net::is_deferred_icmp_error(&e) => self.note_reports(&side.socket),
                Err(e) => return Err(ChatError::Io(e)),
            }
        }
    }

    /// The socket's descriptor, for an event loop to watch for readability (never to read:
    /// the receives go through the peer).
    #[cfg(unix)]
    pub fn fileno(&self) -> Result<i32> {
        use std::os::fd::AsRawFd;
        let recv = self.recv.lock();
        recv.as_ref().map(|side| side.socket.as_raw_fd()).ok_or(ChatError::Closed(CLOSED))
    }

    /// Waits until `deadline` for a datagram from `from` (anyone when `None`). A deadline that
    /// has passed is a look without waiting, not even for another thread's receive to end.
    fn recv_matching(&self, deadline: Instant, from: Option<SocketAddr>) -> Result<Option<(Vec<u8>, SocketAddr)>> {
        let mut recv = if Instant::now() >= deadline {
            match self.recv.try_lock() {
                Some(recv) => recv,
                None if self.is_closed() => return Err(ChatError::Closed(CLOSED)),
                None => return Ok(None),
            }
        } else {
            self.recv.lock()
        };
        loop {
            if self.is_closed() {
                return Err(ChatError::Closed(CLOSED));
            }
            let side = recv.as_mut().ok_or(ChatError::Closed(CLOSED))?;
            match side.batch.recv(&side.socket) {
                Ok(0) => self.note_reports(&side.socket),
                Ok(_) => {
                    self.counters.count_reads(&side.batch);
                    let datagram = side.batch.get(0);
                    if from.is_none_or(|want| replies_from(want, datagram.from)) {
                        return Ok(Some((datagram.data.to_vec(), datagram.from)));
                    }
                    self.ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // An ICMP report about some earlier destination; the socket is fine.
                Err(e) if net::is_deferred_icmp_error(&e) => {
                    self.note_reports(&side.socket);
                    continue;
                }
                Err(e) => return Err(ChatError::Io(e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            side.waiter.wait(left)?;
        }
    }
}

impl Drop for UdpPeer {
    fn drop(&mut self) {
        self.close();
    }
}

/// What one [`Request::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPoll {
    Reply(Vec<u8>, SocketAddr),
    /// Still waiting; poll again.
    Pending,
    /// Every try timed out.
    NoReply,
}

/// A request in flight, polled in slices so a caller can do other work (such as checking for
/// Ctrl-C, or serving an event loop) between waits. [`UdpPeer::request`] is the blocking form.
pub struct Request {
    data: Vec<u8>,
    to: SocketAddr,
    timeout: Duration,
    retries_left: u32,
    deadline: Instant,
    challenges_left: u32,
}

/// Challenges one request answers at most: a validated server asks once (and once more when
/// the validation runs out mid-request); more is a peer playing games.
const MAX_CHALLENGES: u32 = 3;

impl Request {
    /// Discards stale datagrams, then sends the first try.
    pub fn start(peer: &UdpPeer, data: &[u8], to: SocketAddr, timeout: Duration, retries: u32) -> Result<Request> {
        peer.discard_pending()?;
        peer.send_to(data, to)?;
        Ok(Request {
            data: data.to_vec(),
            to,
            timeout,
            retries_left: retries,
            deadline: deadline_after(timeout),
            challenges_left: MAX_CHALLENGES,
        })
    }

    /// Waits at most `slice` (and never past the current try's timeout) on `peer`, the peer
    /// that started it; resends when a try has timed out and retries are left.
    pub fn poll(&mut self, peer: &UdpPeer, slice: Duration) -> Result<RequestPoll> {
        if Instant::now() >= self.deadline {
            if self.retries_left == 0 {
                return Ok(RequestPoll::NoReply);
            }
            self.retries_left -= 1;
            peer.retries.fetch_add(1, Ordering::Relaxed);
            peer.send_to(&self.data, self.to)?;
            self.deadline = deadline_after(self.timeout);
        }
        let until = deadline_after(slice).min(self.deadline);
        Ok(match peer.recv_matching(until, Some(self.to))? {
            // A server with `validate=True` asks for its cookie back first; answer it and ask
            // again, without spending a retry. A request that itself starts like a cookie
            // (a time format `^ck^...`) takes its answer as it is.
            Some((data, _)) if self.is_challenge(&data) => {
                self.challenges_left -= 1;
                peer.challenges.fetch_add(1, Ordering::Relaxed);
                peer.send_to(&data, self.to)?;
                peer.send_to(&self.data, self.to)?;
                self.deadline = deadline_after(self.timeout);
                RequestPoll::Pending
            }
            Some((data, from)) => RequestPoll::Reply(data, from),
            None => RequestPoll::Pending,
        })
    }

    /// How long until the current try times out (zero once it has).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn is_challenge(&self, reply: &[u8]) -> bool {
        self.challenges_left > 0 && auth::is_challenge(reply) && !self.data.starts_with(auth::COOKIE_PREFIX)
    }
}

/// Whether a datagram from `from` is the reply of a request sent to `to`. A request sent to an
/// unspecified address (`0.0.0.0`, which Linux delivers locally) is answered from a real one.
/// IPv6 flow labels and scope ids play no part.
fn replies_from(to: SocketAddr, from: SocketAddr) -> bool {
    from.port() == to.port() && (from.ip() == to.ip() || to.ip().is_unspecified())
}

fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_DATAGRAM;
    use std::net::UdpSocket;

    fn peer() -> UdpPeer {
        UdpPeer::bind("127.0.0.1:0".parse().unwrap(), 1024, SocketOptions::default()).unwrap()
    }

    fn server() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        socket
    }

    #[test]
    fn send_and_receive_with_timeout() {
        let p = peer();
        let s = server();
        p.send_to(b"hi", s.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hi"[..], p.local_addr()));
        s.send_to(&[b'x'; 2000], from).unwrap();
        let (data, addr) = p.recv_from(Duration::from_secs(3)).unwrap().unwrap();
        assert_eq!((data.len(), addr), (1024, s.local_addr().unwrap()));
        let started = Instant::now();
        assert_eq!(p.recv_from(Duration::from_millis(50)).unwrap(), None);
        assert!(started.elapsed() >= Duration::from_millis(50));
        let stats = p.stats();
        assert_eq!((stats.sent, stats.received), (1, 1));
        assert_eq!(stats.truncated, 1);
    }

    #[test]
    fn request_retries_then_gives_up() {
        let p = peer();
        let silent = server();
        let to = silent.local_addr().unwrap();
        let started = Instant::now();
        let reply = p.request(b"anyone?", to, Duration::from_millis(50), 2).unwrap();
        assert_eq!(reply, None);
        assert!(started.elapsed() >= Duration::from_millis(150));
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let (n, _) = silent.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"anyone?");
        }
        assert_eq!(p.stats().retries, 2);
    }

    #[test]
    fn request_ignores_strangers_and_stale_replies() {
        let p = peer();
        let s = server();
        let stranger = server();
        let to = s.local_addr().unwrap();
        // A stale reply, queued before the request.
        s.send_to(b"stale", p.local_addr()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            stranger.send_to(b"noise", from).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.send_to(&buf[..n].to_ascii_uppercase(), from).unwrap();
        });
        let reply = p.request(b"ping", to, Duration::from_secs(3), 0).unwrap();
        thread.join().unwrap();
        assert_eq!(reply, Some((b"PING".to_vec(), to)));
        assert_eq!(p.stats().ignored, 2);
    }

    #[test]
    fn close_wakes_a_waiting_receiver_and_frees_the_port() {
        let p = Arc::new(peer());
        let waiting = Arc::clone(&p);
        let started = Instant::now();
        let thread = std::thread::spawn(move || waiting.recv_from(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        p.close();
        assert!(matches!(thread.join().unwrap(), Err(ChatError::Closed(_))));
        assert!(started.elapsed() < Duration::from_secs(5));
        p.close();
        assert!(matches!(p.send_to(b"x", p.local_addr()), Err(ChatError::Closed(_))));
        UdpSocket::bind(p.local_addr()).unwrap();
    }

    #[test]
    fn replies_match_on_address_and_port_only() {
        let to: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert!(replies_from(to, to));
        assert!(!replies_from(to, "127.0.0.1:9001".parse().unwrap()));
        assert!(!replies_from(to, "127.0.0.2:9000".parse().unwrap()));
        assert!(replies_from("0.0.0.0:9000".parse().unwrap(), to));
        let v6 = SocketAddr::V6(std::net::SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9000, 0, 0));
        let labelled = SocketAddr::V6(std::net::SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9000, 7, 0));
        assert!(replies_from(v6, labelled));
    }

    #[test]
    fn for_remote_picks_the_family() {
        let v4 = UdpPeer::for_remote("127.0.0.1:9".parse().unwrap(), 64, SocketOptions::default()).unwrap();
        assert!(v4.local_addr().is_ipv4() && v4.local_addr().port() != 0);
        assert!(matches!(
            UdpPeer::bind("127.0.0.1:0".parse().unwrap(), 0, SocketOptions::default()),
            Err(ChatError::InvalidArgument(_))
        ));
        assert!(matches!(
            v4.send_to(&vec![0; MAX_DATAGRAM + 1], "127.0.0.1:9".parse().unwrap()),
            Err(ChatError::TooLong { .. })
        ));
    }

    #[test]
    fn a_request_to_a_closed_port_is_counted_refused_and_sends_go_on() {
        if !crate::net::LINUX_IO {
            return; // the portable build reads no error queue: nothing is counted refused
        }
        let closed = server().local_addr().unwrap(); // dropped: nothing listens there now
        let client = UdpPeer::for_remote(closed, 1024, SocketOptions::default()).unwrap();
        let started = Instant::now();
        assert_eq!(client.request(b"anyone?", closed, Duration::from_millis(100), 2).unwrap(), None);
        // Each try met the closed port; the report handed to the next send did not stop it.
        let stats = client.stats();
        assert_eq!((stats.sent, stats.refused, stats.send_errors), (3, 3, 0));
        // No busy loop on a pending error: the wait took the three timeouts.
        assert!(started.elapsed() >= Duration::from_millis(300));
        let s = server();
        assert_eq!(peer().stats().refused, 0);
        client.send_to(b"still sends", s.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"still sends");
    }
}
