//! Sockets, readiness and batched datagram I/O, with one interface over two platform modules
//! (as quinn-udp does):
//!
//! - `linux.rs`: `recvmmsg`/`sendmmsg` batches, the error queue of ICMP errors, receive
//!   timestamps and drop counts, and two ways to wait: epoll with an eventfd, or the socket's own
//!   blocking receive woken by datagrams from a loopback socket (`Waiter::in_receive`);
//! - `portable.rs`: the `polling` crate, loops of `recv_from`/`send_to`, none of the extras.
//!   Every other platform builds it, and the cargo feature `portable` forces it on Linux, so the
//!   code other platforms run is built and tested here.
//!
//! Buffers are allocated once per socket thread and reused.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[cfg(all(target_os = "linux", not(feature = "portable")))]
#[path = "linux.rs"]
mod imp;
#[cfg(not(all(target_os = "linux", not(feature = "portable"))))]
#[path = "portable.rs"]
mod imp;

/// Waits for a socket to become readable (or to have an error queued), or for a wake-up from
/// its [`Waker`]: `Waiter::new(&socket)` gives both, `waiter.wait(timeout)` is true when the
/// socket is readable. `Waiter::in_receive(&socket)` waits in the socket's own blocking read
/// instead ([`RecvBatch::recv_blocking`], one system call per wake-up where epoll takes two),
/// for a socket that nothing else reads; a [`RecvBatch`] made `waking(&waiter)` leaves the
/// waker's datagrams out. The [`Waker`] is cheap to clone and usable from any thread.
pub use imp::{Waiter, Waker};

/// True where the Linux module is built: batched system calls, the error queue, ancillary data.
pub const LINUX_IO: bool = cfg!(all(target_os = "linux", not(feature = "portable")));

/// Resolves `(host, port)` the way Python's `socket.bind`/`connect` on an AF_INET socket
/// would: `""` is every address, and a name that resolves to both families picks IPv4.
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let lookup_failed = |why: String| io::Error::other(LookupFailed { host: host.to_owned(), why });
    let candidates: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| lookup_failed(e.to_string()))?.collect();
    candidates
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| lookup_failed("no address found".to_owned()))
}

/// A host name that did not resolve (Python raises `socket.gaierror` for it, naming the host).
#[derive(Debug)]
pub struct LookupFailed {
    pub host: String,
    pub why: String,
}

impl std::fmt::Display for LookupFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = self.why.strip_prefix("failed to lookup address information: ").unwrap_or(&self.why);
        write!(f, "cannot resolve host {:?}: {why}; give an IP address or a name this machine can resolve", self.host)
    }
}

impl std::error::Error for LookupFailed {}

/// Socket options a server or client may set before it binds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOptions {
    pub rcvbuf: Option<usize>,
    pub sndbuf: Option<usize>,
}

/// A non-blocking UDP socket for `local`, bound when `bind` is true.
pub fn udp_socket(local: SocketAddr, bind: bool, options: SocketOptions) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(size) = options.rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = options.sndbuf {
        socket.set_send_buffer_size(size)?;
    }
    if bind {
        socket.bind(&local.into())?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The address a socket is bound to.
pub fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket has no IP address"))
}

/// One received datagram inside a [`RecvBatch`].
pub struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    /// The datagram was longer than the buffer and was cut, as `recvfrom(bufsize)` cuts it.
    pub truncated: bool,
    /// Wall-clock seconds it was received: the kernel's timestamp where [`enable_ancillary`]
    /// asked for one, otherwise the time it was read.
    pub time: f64,
}

/// What the platform module tells about one received datagram.
#[derive(Debug, Clone, Copy)]
struct Meta {
    len: usize,
    from: SocketAddr,
    truncated: bool,
    time: Option<f64>,
    /// The socket's drop counter as of this datagram (ancillary data).
    drops: Option<u64>,
}

/// Reusable buffers for reading up to `slots` datagrams of up to `bufsize` bytes each.
pub struct RecvBatch {
    bufsize: usize,
    storage: Vec<u8>,
    meta: Vec<Meta>,
    count: usize,
    /// When the batch was read, for the datagrams the kernel did not stamp.
    read_at: f64,
    /// The kernel's count of datagrams dropped on this socket, as of the newest datagram that
    /// carried it (see [`enable_ancillary`]).
    pub kernel_drops: Option<u64>,
    /// Datagrams from here are a [`Waker`]'s, not the peers': they are left out of the batch.
    wake_source: Option<SocketAddr>,
    sys: imp::RecvArrays,
}

impl RecvBatch {
    pub fn new(slots: usize, bufsize: usize) -> RecvBatch {
        let slots = slots.max(1);
        let empty =
            Meta { len: 0, from: SocketAddr::from(([0, 0, 0, 0], 0)), truncated: false, time: None, drops: None };
        RecvBatch {
            bufsize,
            // One byte more: the portable path reads a byte past a slot to see a datagram cut.
            storage: vec![0; slots * bufsize + 1],
            meta: vec![empty; slots],
            count: 0,
            read_at: 0.0,
            kernel_drops: None,
            wake_source: None,
            sys: imp::RecvArrays::new(slots),
        }
    }

    /// Leaves the datagrams of the waker of `waiter` out of every batch read (see
    /// [`Waiter::in_receive`]).
    pub fn waking(mut self, waiter: &Waiter) -> RecvBatch {
        self.wake_source = waiter.wake_source();
        self
    }

    pub fn slots(&self) -> usize {
        self.meta.len()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many datagrams of the batch were longer than the buffer, and cut.
    pub fn truncated(&self) -> usize {
        self.meta[..self.count].iter().filter(|meta| meta.truncated).count()
    }

    pub fn get(&self, index: usize) -> Datagram<'_> {
        let start = index * self.bufsize;
        let meta = &self.meta[index];
        Datagram {
            data: &self.storage[start..start + meta.len],
            from: meta.from,
            truncated: meta.truncated,
            time: meta.time.unwrap_or(self.read_at),
        }
    }

    /// Reads what is queued, up to a full batch, without blocking; `Ok(0)` when nothing is.
    pub fn recv(&mut self, socket: &Socket) -> io::Result<usize> {
        self.read(socket, self.slots(), false)
    }

    /// Reads up to `max` queued datagrams without blocking; `Ok(0)` when none is queued.
    pub fn recv_max(&mut self, socket: &Socket, max: usize) -> io::Result<usize> {
        self.read(socket, max, false)
    }

    /// Reads a batch, waiting for its first datagram when the socket blocks (a socket given to
    /// [`Waiter::in_receive`]) until one comes, a wake-up, or the timeout the waiter set:
    /// `Ok(0)` after a wake-up or the timeout.
    pub fn recv_blocking(&mut self, socket: &Socket) -> io::Result<usize> {
        self.read(socket, self.slots(), true)
    }

    fn read(&mut self, socket: &Socket, max: usize, block: bool) -> io::Result<usize> {
        self.count = 0;
        let max = max.clamp(1, self.slots());
        match self.sys.recv(socket, &mut self.storage, self.bufsize, max, &mut self.meta, block) {
            Ok(n) => {
                self.count = match self.wake_source {
                    Some(wake) => self.leave_out(n, wake),
                    None => n,
                };
                self.read_at = crate::worker::wall_clock();
                if let Some(drops) = self.meta[..n].iter().rev().find_map(|m| m.drops) {
                    self.kernel_drops = Some(drops);
                }
                Ok(self.count)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Moves the datagrams not from `wake` to the front of the `n` read; returns how many.
    fn leave_out(&mut self, n: usize, wake: SocketAddr) -> usize {
        let mut kept = 0;
        for index in 0..n {
            let from = self.meta[index].from;
            if from.ip() == wake.ip() && from.port() == wake.port() {
                continue;
            }
            if kept != index {
                let start = index * self.bufsize;
                self.storage.copy_within(start..start + self.meta[index].len, kept * self.bufsize);
                self.meta[kept] = self.meta[index];
            }
            kept += 1;
        }
        kept
    }
}

/// The outcome of sending one payload to many addresses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: usize,
    pub failed: usize,
    /// ICMP errors about earlier datagrams met on the way (see [`is_deferred_icmp_error`]).
    pub deferred_errors: usize,
}

/// Reusable state for sending one payload to many destinations.
#[derive(Default)]
pub struct SendBatch {
    scratch: Outgoing,
    sys: imp::SendArrays,
    /// Error queues read after every system call of a send (see [`SendBatch::reading_errors`]).
    error_queues: Vec<Arc<Socket>>,
    /// Destinations the error queue reported unreachable during the sends, not yet taken.
    unreachable: Vec<SocketAddr>,
}

/// Datagrams waiting for one [`SendBatch::send_many`]: each payload stored once, and one entry
/// per destination pointing at it.
#[derive(Default)]
pub struct Outgoing {
    bytes: Vec<u8>,
    entries: Vec<(usize, usize, SocketAddr)>,
}

impl Outgoing {
    /// Queues `payload` for every address in `to`.
    pub fn push(&mut self, payload: &[u8], to: &[SocketAddr]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.entries.extend(to.iter().map(|&addr| (start, payload.len(), addr)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    pub(crate) fn get(&self, index: usize) -> (&[u8], SocketAddr) {
        let (start, len, addr) = self.entries[index];
        (&self.bytes[start..start + len], addr)
    }
}

impl SendBatch {
    /// A batch that reads the error queues of `sockets` (see [`enable_error_queue`]) while it
    /// sends: the sending socket's and, in a `SO_REUSEPORT` group, those of the others, where
    /// the kernel may file the errors. A queue's room is its socket's receive buffer: one
    /// broadcast to thousands of closed ports would overflow it, and the errors it drops would
    /// leave those clients in the table. Read between the system calls of a send, it never
    /// holds more than one call's worth.
    pub fn reading_errors(sockets: Vec<Arc<Socket>>) -> SendBatch {
        SendBatch { error_queues: sockets, ..SendBatch::default() }
    }

    /// Moves the destinations reported unreachable during the sends so far into `into`.
    pub fn take_unreachable(&mut self, into: &mut Vec<SocketAddr>) {
        into.append(&mut self.unreachable);
    }

    pub fn has_unreachable(&self) -> bool {
        !self.unreachable.is_empty()
    }

    /// Sends `payload` to every address in `to`; see [`SendBatch::send_many`].
    pub fn send_to_all(
        &mut self,
        socket: &Socket,
        payload: &[u8],
        to: &[SocketAddr],
        on_error: impl FnMut(SocketAddr, i32),
    ) -> SendReport {
        let mut one = std::mem::take(&mut self.scratch);
        one.clear();
        one.push(payload, to);
        let report = self.send_many(socket, &one, on_error);
        self.scratch = one;
        report
    }

    /// Sends every queued datagram, as few system calls as the kernel allows; `on_error(addr,
    /// errno)` hears about each failure. When the send buffer is full it waits for room
    /// (bounded), so nothing is dropped that the kernel would take a moment later.
    pub fn send_many(
        &mut self,
        socket: &Socket,
        out: &Outgoing,
        mut on_error: impl FnMut(SocketAddr, i32),
    ) -> SendReport {
        let mut report = SendReport::default();
        let mut next = 0;
        let mut stalls = 0;
        while next < out.len() {
            // Between the system calls of a long send (a short one costs no extra call: what
            // its errors queue is read when the poller reports them).
            if next > 0 {
                for queue in &self.error_queues {
                    drain_unreachable(queue, &mut self.unreachable);
                }
            }
            match self.sys.send(socket, out, next) {
                Ok(n) => {
                    report.sent += n;
                    next += n;
                    stalls = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && stalls < MAX_SEND_STALLS => {
                    stalls += 1;
                    wait_writable(socket, SEND_STALL_WAIT);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An ICMP error about an earlier datagram: this one was not sent, try it again.
                Err(e) if is_deferred_icmp_error(&e) && stalls < MAX_SEND_STALLS => {
                    stalls += 1;
                    report.deferred_errors += 1;
                }
                Err(e) => {
                    on_error(out.get(next).1, e.raw_os_error().unwrap_or(0));
                    report.failed += 1;
                    next += 1;
                    stalls = 0;
                }
            }
        }
        report
    }
}

const MAX_SEND_STALLS: u32 = 50;
const SEND_STALL_WAIT: Duration = Duration::from_millis(20);

/// Waits until `socket` can take another datagram, or `timeout` passes.
pub use imp::wait_writable;

/// Sends one datagram on a socket, to `to` or, when `None`, to its connected peer.
pub fn send_one(socket: &Socket, payload: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let mut stalls = 0;
    loop {
        let result = match to {
            Some(addr) => socket.send_to(payload, &SockAddr::from(addr)),
            None => socket.send(payload),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && stalls < MAX_SEND_STALLS => {
                stalls += 1;
                wait_writable(socket, SEND_STALL_WAIT);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Asks the kernel to queue ICMP errors (port unreachable and the like) for this socket, so that
/// [`drain_unreachable`] can name the destination that caused each: `enable_error_queue(&socket,
/// ipv6)` returns false where the platform has no error queue.
pub use imp::enable_error_queue;

/// Reads the socket's error queue: `drain_unreachable(&socket, &mut addrs)` pushes each
/// destination that the network reported unreachable and returns how many errors were read.
pub use imp::drain_unreachable;

/// Asks the kernel for receive timestamps and drop counts on a socket (read into
/// [`RecvBatch`]); `enable_ancillary(&socket)` returns whether the drop count is available.
pub use imp::enable_ancillary;

/// `kernel_drops_now(&socket)`: the kernel's current count of datagrams dropped on the socket,
/// where the platform tells.
pub use imp::kernel_drops_now;

/// `socket_inode(&socket)`: the inode that names the socket in `/proc/net/udp`, on Linux.
pub use imp::socket_inode;

/// True for errors a UDP socket reports late, on a later call, because of an ICMP message about
/// an earlier datagram: they say nothing about the call that returned them.
pub fn is_deferred_icmp_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_socket() -> Arc<Socket> {
        Arc::new(udp_socket("127.0.0.1:0".parse().unwrap(), true, SocketOptions::default()).unwrap())
    }

    #[test]
    fn resolve_prefers_ipv4_and_empty_means_any() {
        assert_eq!(resolve("", 5).unwrap(), "0.0.0.0:5".parse().unwrap());
        assert_eq!(resolve("127.0.0.1", 7).unwrap(), "127.0.0.1:7".parse().unwrap());
        assert_eq!(resolve("::1", 7).unwrap(), "[::1]:7".parse().unwrap());
        assert!(resolve("localhost", 7).unwrap().is_ipv4());
        let failed = resolve("no such host.invalid", 7).unwrap_err();
        let lookup = failed.get_ref().and_then(|e| e.downcast_ref::<LookupFailed>()).unwrap();
        assert_eq!(lookup.host, "no such host.invalid");
        assert!(failed.to_string().contains("cannot resolve host \"no such host.invalid\""), "{failed}");
    }

    #[test]
    fn batch_round_trip_reports_truncation() {
        let receiver = loopback_socket();
        let sender = loopback_socket();
        let to = local_addr(&receiver).unwrap();
        let mut send = SendBatch::default();
        for payload in [&b"one"[..], b"", &[7u8; 20]] {
            let report = send.send_to_all(&sender, payload, &[to], |_, _| panic!("send failed"));
            assert_eq!((report.sent, report.failed), (1, 0));
        }
        let (mut waiter, _waker) = Waiter::new(&receiver).unwrap();
        let mut batch = RecvBatch::new(8, 10);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            assert!(waiter.wait(Duration::from_secs(2)).unwrap(), "datagrams did not arrive");
            batch.recv(&receiver).unwrap();
            seen.extend((0..batch.len()).map(|i| {
                let d = batch.get(i);
                (d.data.to_vec(), d.truncated, d.from)
            }));
        }
        let from = local_addr(&sender).unwrap();
        assert_eq!(seen[0], (b"one".to_vec(), false, from));
        assert_eq!(seen[1], (Vec::new(), false, from));
        assert_eq!(seen[2], (vec![7u8; 10], true, from));
    }

    #[test]
    fn error_queue_names_unreachable_destinations() {
        let socket = loopback_socket();
        assert_eq!(enable_error_queue(&socket, false).unwrap(), LINUX_IO);
        let dead = loopback_socket();
        let dead_addr = local_addr(&dead).unwrap();
        drop(dead);
        let alive = loopback_socket();
        let alive_addr = local_addr(&alive).unwrap();
        let mut send = SendBatch::default();
        let mut failed = Vec::new();
        for _ in 0..3 {
            let report = send.send_to_all(&socket, b"x", &[dead_addr, alive_addr], |a, e| failed.push((a, e)));
            assert_eq!(report.sent, 2, "{failed:?}");
        }
        let mut unreachable = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while unreachable.is_empty() && std::time::Instant::now() < deadline {
            drain_unreachable(&socket, &mut unreachable);
        }
        if LINUX_IO {
            assert!(!unreachable.is_empty());
            assert!(unreachable.iter().all(|a| *a == dead_addr));
        }
    }

    #[test]
    fn stamps_each_datagram_and_counts_the_kernels_drops() {
        let options = SocketOptions { rcvbuf: Some(4096), sndbuf: None };
        let receiver = Arc::new(udp_socket("127.0.0.1:0".parse().unwrap(), true, options).unwrap());
        let drops_known = enable_ancillary(&receiver);
        let to = local_addr(&receiver).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = crate::worker::wall_clock();
        // Far more than a 4 KiB buffer holds: the kernel drops most of them.
        for i in 0..2000u32 {
            sender.send_to(&i.to_be_bytes(), to).unwrap();
        }
        let (mut waiter, _waker) = Waiter::new(&receiver).unwrap();
        let mut rx = RecvBatch::new(64, 16);
        let mut got = 0;
        let mut times = Vec::new();
        while waiter.wait(Duration::from_millis(200)).unwrap() {
            while rx.recv_max(&receiver, 64).unwrap() > 0 {
                got += rx.len();
                times.extend((0..rx.len()).map(|i| rx.get(i).time));
            }
        }
        assert!(got > 0 && got < 2000, "{got}");
        let now = crate::worker::wall_clock();
        assert!(times.iter().all(|&t| t >= before - 1.0 && t <= now + 1.0));
        assert_eq!(drops_known, LINUX_IO);
        if LINUX_IO {
            assert_eq!(kernel_drops_now(&receiver), Some(2000 - got as u64));
            // The cmsg carries the count as of each datagram's queueing: here every datagram was
            // queued before the first drop, so only SO_MEMINFO knows.
            assert!(rx.kernel_drops.unwrap_or(0) <= 2000 - got as u64);
        }
    }

    /// Reads `socket` until a batch comes or 5 s pass; the datagrams' payloads and sources.
    fn read_some(waiter: &mut Waiter, batch: &mut RecvBatch, socket: &Socket) -> Vec<(Vec<u8>, SocketAddr)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if waiter.wait(Duration::from_millis(100)).unwrap() && batch.recv_blocking(socket).unwrap() > 0 {
                return (0..batch.len()).map(|i| (batch.get(i).data.to_vec(), batch.get(i).from)).collect();
            }
        }
        Vec::new()
    }

    #[test]
    fn a_blocking_receive_is_woken_by_a_datagram_it_leaves_out() {
        let socket = loopback_socket();
        let (mut waiter, waker) = Waiter::in_receive(&socket).unwrap();
        assert_eq!(waiter.wake_source().is_some(), LINUX_IO);
        let Some(wake_from) = waiter.wake_source() else { return };
        // What wakes the blocking read: an empty datagram from the waker's own socket...
        let mut plain = RecvBatch::new(8, 16);
        waker.wake();
        assert_eq!(read_some(&mut waiter, &mut plain, &socket), vec![(Vec::new(), wake_from)]);
        // ...which a waking batch leaves out, on either side of a peer's datagram.
        let mut batch = RecvBatch::new(8, 16).waking(&waiter);
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        waker.wake();
        peer.send_to(b"hello", local_addr(&socket).unwrap()).unwrap();
        waker.wake();
        let seen = read_some(&mut waiter, &mut batch, &socket);
        assert_eq!(seen, vec![(b"hello".to_vec(), peer.local_addr().unwrap())]);
        assert_eq!(batch.recv(&socket).unwrap(), 0);
    }

    #[test]
    fn a_blocking_receive_ends_at_its_timeout() {
        let socket = loopback_socket();
        let (mut waiter, _waker) = Waiter::in_receive(&socket).unwrap();
        // Where the waiter polls instead (the portable build), `wait` itself would wait.
        if waiter.wake_source().is_none() {
            return;
        }
        let mut batch = RecvBatch::new(8, 16).waking(&waiter);
        let started = std::time::Instant::now();
        waiter.wait(Duration::from_millis(20)).unwrap();
        assert_eq!(batch.recv_blocking(&socket).unwrap(), 0);
        // Never longer than the longest receive wait, whatever the deadline asked for.
        waiter.wait(Duration::from_secs(3600)).unwrap();
        assert_eq!(batch.recv_blocking(&socket).unwrap(), 0);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn a_socket_bound_to_every_address_is_woken_through_loopback() {
        for any in ["0.0.0.0:0", "[::]:0"] {
            let Ok(socket) = udp_socket(any.parse().unwrap(), true, SocketOptions::default()) else { continue };
            let socket = Arc::new(socket);
            let (mut waiter, waker) = Waiter::in_receive(&socket).unwrap();
            let Some(wake_from) = waiter.wake_source() else { continue };
            assert!(wake_from.ip().is_loopback(), "{wake_from}");
            waker.wake();
            let seen = read_some(&mut waiter, &mut RecvBatch::new(8, 16), &socket);
            assert_eq!(seen, vec![(Vec::new(), wake_from)], "bound to {any}");
        }
    }

    #[test]
    fn waker_interrupts_a_wait() {
        let socket = loopback_socket();
        let (mut waiter, waker) = Waiter::new(&socket).unwrap();
        let started = std::time::Instant::now();
        let thread = std::thread::spawn(move || waiter.wait(Duration::from_secs(10)).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        waker.wake();
        assert!(!thread.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
