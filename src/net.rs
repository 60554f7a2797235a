//! Sockets, readiness and batched datagram I/O.
//!
//! On Linux a batch is one `recvmmsg`/`sendmmsg` system call; elsewhere it is a loop of
//! `recv_from`/`send_to`. Buffers are allocated once per socket thread and reused.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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

/// Waits for a socket to become readable, or for a wake-up from [`Waker`].
///
/// On Linux: one epoll set holding the socket and an eventfd, and a plain `epoll_wait` with a
/// millisecond timeout: two system calls per wake-up at most. Elsewhere: the `polling` crate.
pub struct Waiter {
    #[cfg(target_os = "linux")]
    epoll: std::os::fd::OwnedFd,
    #[cfg(target_os = "linux")]
    wake: Arc<std::os::fd::OwnedFd>,
    #[cfg(not(target_os = "linux"))]
    poller: Arc<polling::Poller>,
    #[cfg(not(target_os = "linux"))]
    events: polling::Events,
}

/// Wakes the thread blocked in [`Waiter::wait`]; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Waker {
    #[cfg(target_os = "linux")]
    wake: Arc<std::os::fd::OwnedFd>,
    #[cfg(not(target_os = "linux"))]
    poller: Arc<polling::Poller>,
}

const SOCKET_KEY: u64 = 1;
const WAKE_KEY: u64 = 2;

impl Waker {
    pub fn wake(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd. A full counter (EAGAIN)
            // means a wake-up is pending already.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        #[cfg(not(target_os = "linux"))]
        {
            // A failed notify means the poller is gone, and with it the thread to wake.
            let _ = self.poller.notify();
        }
    }
}

#[cfg(target_os = "linux")]
fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Waiter {
    /// Registers `socket`; the socket must stay open for as long as the waiter lives.
    #[cfg(target_os = "linux")]
    pub fn new(socket: &Arc<Socket>) -> io::Result<(Waiter, Waker)> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain system calls; each new descriptor is owned at once.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = unsafe { OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?) };
        for (fd, key) in [(socket.as_raw_fd(), SOCKET_KEY), (wake.as_raw_fd(), WAKE_KEY)] {
            // Level-triggered: whatever is left unread is reported again on the next wait.
            let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: key };
            // SAFETY: valid descriptors and a live epoll_event.
            cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })?;
        }
        let wake = Arc::new(wake);
        Ok((Waiter { epoll, wake: Arc::clone(&wake) }, Waker { wake }))
    }

    /// Blocks up to `timeout`; true when the socket is readable (or has an error queued).
    #[cfg(target_os = "linux")]
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        // Rounded up, so a deadline a few microseconds away is not a busy loop.
        let millis = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: a live array of 2 events.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, millis) };
        if n < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(error) };
        }
        let mut readable = false;
        for event in &events[..n as usize] {
            if event.u64 == WAKE_KEY {
                let mut count: u64 = 0;
                // SAFETY: reads 8 bytes into a live u64; resets the eventfd.
                unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            } else {
                readable = true;
            }
        }
        Ok(readable)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(socket: &Arc<Socket>) -> io::Result<(Waiter, Waker)> {
        let poller = Arc::new(polling::Poller::new()?);
        // SAFETY: every caller keeps the socket open (an `Arc` held by the same thread state)
        // until after the waiter is dropped, and the poller never outlives that state.
        unsafe {
            poller.add_with_mode(&**socket, polling::Event::readable(SOCKET_KEY as usize), polling::PollMode::Level)?
        };
        Ok((Waiter { poller: Arc::clone(&poller), events: polling::Events::new() }, Waker { poller }))
    }

    #[cfg(not(target_os = "linux"))]
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        self.events.clear();
        match self.poller.wait(&mut self.events, Some(timeout)) {
            Ok(_) => Ok(self.events.iter().any(|e| e.key == SOCKET_KEY as usize)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One received datagram inside a [`RecvBatch`].
pub struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    /// The datagram was longer than the buffer and was cut, as `recvfrom(bufsize)` cuts it.
    pub truncated: bool,
}

/// Reusable buffers for reading up to `slots` datagrams of up to `bufsize` bytes each.
pub struct RecvBatch {
    bufsize: usize,
    storage: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    truncated: Vec<bool>,
    count: usize,
    #[cfg(target_os = "linux")]
    sys: linux::RecvArrays,
}

impl RecvBatch {
    pub fn new(slots: usize, bufsize: usize) -> RecvBatch {
        let slots = slots.max(1);
        RecvBatch {
            bufsize,
            storage: vec![0; slots * bufsize],
            lens: vec![0; slots],
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); slots],
            truncated: vec![false; slots],
            count: 0,
            #[cfg(target_os = "linux")]
            sys: linux::RecvArrays::new(slots),
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn get(&self, index: usize) -> Datagram<'_> {
        let start = index * self.bufsize;
        Datagram {
            data: &self.storage[start..start + self.lens[index]],
            from: self.addrs[index],
            truncated: self.truncated[index],
        }
    }

    /// Reads what is queued without blocking; `Ok(0)` when nothing is.
    pub fn recv(&mut self, socket: &Socket) -> io::Result<usize> {
        self.count = 0;
        let received = self.recv_inner(socket);
        match received {
            Ok(n) => {
                self.count = n;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    #[cfg(target_os = "linux")]
    fn recv_inner(&mut self, socket: &Socket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = self.sys.recvmmsg(socket.as_raw_fd(), &mut self.storage, self.bufsize)?;
        for i in 0..n {
            let (len, addr, truncated) = self.sys.result(i, self.bufsize);
            self.lens[i] = len;
            self.addrs[i] = addr;
            self.truncated[i] = truncated;
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_inner(&mut self, socket: &Socket) -> io::Result<usize> {
        let mut n = 0;
        while n < self.lens.len() {
            let start = n * self.bufsize;
            let slot = &mut self.storage[start..start + self.bufsize];
            // SAFETY: u8 and MaybeUninit<u8> have the same layout, and the slot is initialised.
            let uninit = unsafe { &mut *(slot as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            match socket.recv_from_with_flags(uninit, 0) {
                Ok((len, addr)) => {
                    self.lens[n] = len.min(self.bufsize);
                    self.truncated[n] = false;
                    self.addrs[n] = addr.as_socket().unwrap_or(self.addrs[n]);
                    n += 1;
                }
                Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        Ok(n)
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
    #[cfg(target_os = "linux")]
    sys: linux::SendArrays,
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

    fn get(&self, index: usize) -> (&[u8], SocketAddr) {
        let (start, len, addr) = self.entries[index];
        (&self.bytes[start..start + len], addr)
    }
}

impl SendBatch {
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
            match self.send_some(socket, out, next) {
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

    #[cfg(target_os = "linux")]
    fn send_some(&mut self, socket: &Socket, out: &Outgoing, first: usize) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.sys.sendmmsg(socket.as_raw_fd(), out, first)
    }

    #[cfg(not(target_os = "linux"))]
    fn send_some(&mut self, socket: &Socket, out: &Outgoing, first: usize) -> io::Result<usize> {
        let mut n = 0;
        for index in first..out.len() {
            let (payload, addr) = out.get(index);
            match socket.send_to(payload, &SockAddr::from(addr)) {
                Ok(_) => n += 1,
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        Ok(n)
    }
}

const MAX_SEND_STALLS: u32 = 50;
const SEND_STALL_WAIT: Duration = Duration::from_millis(20);

/// Waits until `socket` can take another datagram, or `timeout` passes.
pub fn wait_writable(socket: &Socket, timeout: Duration) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, millis) };
    }
    #[cfg(not(unix))]
    {
        let _ = socket;
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
    }
}

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
/// [`drain_unreachable`] can name the destination that caused each. Returns false where the
/// platform has no error queue.
pub fn enable_error_queue(socket: &Socket, ipv6: bool) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (level, name) =
            if ipv6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVERR) } else { (libc::IPPROTO_IP, libc::IP_RECVERR) };
        let on: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, ipv6);
        Ok(false)
    }
}

/// Reads the socket's error queue; pushes each destination that the network reported
/// unreachable. Returns how many errors were read.
pub fn drain_unreachable(socket: &Socket, unreachable: &mut Vec<SocketAddr>) -> usize {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        linux::drain_error_queue(socket.as_raw_fd(), unreachable)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, unreachable);
        0
    }
}

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

#[cfg(target_os = "linux")]
mod linux {
    //! `recvmmsg`/`sendmmsg`; socket2 does not wrap them yet.

    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::SocketAddr;
    use std::os::fd::RawFd;

    use socket2::SockAddr;

    pub(super) struct RecvArrays {
        headers: Vec<libc::mmsghdr>,
        iovecs: Vec<libc::iovec>,
        names: Vec<libc::sockaddr_storage>,
    }

    // SAFETY: the raw pointers inside are rebuilt before every call and only point into
    // buffers owned by the same batch; nothing is shared between threads.
    unsafe impl Send for RecvArrays {}

    impl RecvArrays {
        pub(super) fn new(slots: usize) -> RecvArrays {
            // SAFETY: all-zero is a valid value for these plain C structs.
            unsafe {
                RecvArrays {
                    headers: vec![zeroed(); slots],
                    iovecs: vec![zeroed(); slots],
                    names: vec![zeroed(); slots],
                }
            }
        }

        pub(super) fn recvmmsg(&mut self, fd: RawFd, storage: &mut [u8], bufsize: usize) -> io::Result<usize> {
            let slots = self.headers.len();
            for i in 0..slots {
                self.iovecs[i] = libc::iovec { iov_base: storage[i * bufsize..].as_mut_ptr().cast(), iov_len: bufsize };
                let header = &mut self.headers[i];
                header.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                header.msg_hdr.msg_iov = &mut self.iovecs[i];
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_control = std::ptr::null_mut();
                header.msg_hdr.msg_controllen = 0;
                header.msg_hdr.msg_flags = 0;
                header.msg_len = 0;
            }
            // SAFETY: every header points at live buffers of the stated sizes.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    slots as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }

        pub(super) fn result(&self, index: usize, bufsize: usize) -> (usize, SocketAddr, bool) {
            let header = &self.headers[index];
            let len = (header.msg_len as usize).min(bufsize);
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let addr = socket_addr(&self.names[index]).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            (len, addr, truncated)
        }
    }

    fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    pub(super) fn drain_error_queue(fd: RawFd, unreachable: &mut Vec<SocketAddr>) -> usize {
        let mut count = 0;
        // Bounded: the queue is refilled by the kernel while we read it.
        while count < 4096 {
            // SAFETY: all-zero is a valid value for these plain C structs.
            let mut name: libc::sockaddr_storage = unsafe { zeroed() };
            let mut control = [0u64; 64];
            let mut byte = 0u8;
            let mut iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
            // SAFETY: as above.
            let mut header: libc::msghdr = unsafe { zeroed() };
            header.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut iov;
            header.msg_iovlen = 1;
            header.msg_control = control.as_mut_ptr().cast();
            header.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: every pointer in `header` refers to a live local of the stated size.
            let n = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
            if n < 0 {
                break;
            }
            count += 1;
            // SAFETY: the CMSG macros walk the control buffer the kernel just filled.
            let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&header) };
            while !cmsg.is_null() {
                // SAFETY: `cmsg` points into `control` (checked non-null above).
                let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
                let is_error = (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
                    || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR);
                if is_error {
                    // SAFETY: an IP(V6)_RECVERR message carries a sock_extended_err.
                    let error =
                        unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>()) };
                    let from_icmp = matches!(error.ee_origin, libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6);
                    let refused = error.ee_errno == libc::ECONNREFUSED as u32;
                    if from_icmp && refused {
                        if let Some(addr) = socket_addr(&name) {
                            unreachable.push(addr);
                        }
                    }
                }
                // SAFETY: as above.
                cmsg = unsafe { libc::CMSG_NXTHDR(&header, cmsg) };
            }
        }
        count
    }

    /// Enough for one `sendmmsg` call; longer lists go out in several calls.
    const SEND_SLOTS: usize = 64;

    #[derive(Default)]
    pub(super) struct SendArrays {
        headers: Vec<libc::mmsghdr>,
        iovecs: Vec<libc::iovec>,
        names: Vec<SockAddr>,
    }

    // SAFETY: as for `RecvArrays`.
    unsafe impl Send for SendArrays {}

    impl SendArrays {
        /// One `sendmmsg` for up to `SEND_SLOTS` entries of `out`, from `first` on.
        pub(super) fn sendmmsg(&mut self, fd: RawFd, out: &super::Outgoing, first: usize) -> io::Result<usize> {
            let count = (out.len() - first).min(SEND_SLOTS);
            self.names.clear();
            self.iovecs.clear();
            for index in first..first + count {
                let (payload, addr) = out.get(index);
                self.names.push(SockAddr::from(addr));
                self.iovecs
                    .push(libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() });
            }
            // SAFETY: all-zero is a valid mmsghdr.
            self.headers.resize(count, unsafe { zeroed() });
            for ((header, name), iovec) in self.headers.iter_mut().zip(&self.names).zip(&mut self.iovecs) {
                header.msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
                header.msg_hdr.msg_namelen = name.len();
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_control = std::ptr::null_mut();
                header.msg_hdr.msg_controllen = 0;
                header.msg_hdr.msg_flags = 0;
                header.msg_len = 0;
            }
            // SAFETY: headers, names, iovecs and the payloads outlive the call; the kernel only
            // reads them.
            let n = unsafe { libc::sendmmsg(fd, self.headers.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }
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
        assert_eq!(seen[2], (vec![7u8; 10], cfg!(target_os = "linux"), from));
    }

    #[test]
    fn error_queue_names_unreachable_destinations() {
        let socket = loopback_socket();
        assert!(enable_error_queue(&socket, false).unwrap() || !cfg!(target_os = "linux"));
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
        if cfg!(target_os = "linux") {
            assert!(!unreachable.is_empty());
            assert!(unreachable.iter().all(|a| *a == dead_addr));
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
