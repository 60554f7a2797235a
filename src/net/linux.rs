//! Linux: readiness with epoll and an eventfd, batches with `recvmmsg`/`sendmmsg` (socket2 does
//! not wrap them yet), ICMP errors from the socket's error queue (`IP_RECVERR`), receive
//! timestamps and drop counts as ancillary data (`SO_TIMESTAMPNS`, `SO_RXQ_OVFL`, `SO_MEMINFO`).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockAddr, SockAddrStorage, Socket};

use super::{Meta, Outgoing};

const SOCKET_KEY: u64 = 1;
const WAKE_KEY: u64 = 2;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// How a socket thread waits: `Waiter::new` watches the socket and an eventfd in one epoll set
/// (two system calls per wake-up at most); `Waiter::in_receive` lets the socket's own blocking
/// `recvmmsg` wait (one system call per wake-up, as a bare relay), woken by empty datagrams from
/// a loopback socket of the waker's.
pub struct Waiter {
    kind: WaitKind,
}

enum WaitKind {
    Poll {
        epoll: OwnedFd,
        wake: Arc<OwnedFd>,
    },
    InReceive {
        socket: Arc<Socket>,
        wake_from: SocketAddr,
        /// The socket's receive timeout as last set (`SO_RCVTIMEO`).
        timeout: Duration,
    },
}

#[derive(Clone)]
pub struct Waker {
    kind: WakeKind,
}

#[derive(Clone)]
enum WakeKind {
    EventFd(Arc<OwnedFd>),
    Datagram(Arc<UdpSocket>),
}

impl Waker {
    pub fn wake(&self) {
        match &self.kind {
            WakeKind::EventFd(wake) => {
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a live u64 to an eventfd. A full counter (EAGAIN)
                // means a wake-up is pending already.
                unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
            // Dropped only when the socket's buffer is full, and then its thread is awake anyway;
            // refused once the socket is closed, and then there is no thread to wake.
            WakeKind::Datagram(wake) => drop(wake.send(&[])),
        }
    }
}

/// The longest a blocking receive waits, so that a wake-up datagram a firewall dropped costs a
/// stop at most this much.
const LONGEST_RECEIVE_WAIT: Duration = Duration::from_millis(100);

impl Waiter {
    pub fn new(socket: &Arc<Socket>) -> io::Result<(Waiter, Waker)> {
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
        let waiter = Waiter { kind: WaitKind::Poll { epoll, wake: Arc::clone(&wake) } };
        Ok((waiter, Waker { kind: WakeKind::EventFd(wake) }))
    }

    /// Puts `socket` in blocking mode, for [`RecvBatch::recv_blocking`](super::RecvBatch) to
    /// wait in; the socket must not be read any other way. Falls back to [`Waiter::new`] where
    /// no socket can reach it to wake it.
    pub fn in_receive(socket: &Arc<Socket>) -> io::Result<(Waiter, Waker)> {
        let Ok(wake) = wake_socket(socket) else { return Waiter::new(socket) };
        let wake_from = wake.local_addr()?;
        socket.set_read_timeout(Some(LONGEST_RECEIVE_WAIT))?;
        socket.set_nonblocking(false)?;
        let kind = WaitKind::InReceive { socket: Arc::clone(socket), wake_from, timeout: LONGEST_RECEIVE_WAIT };
        Ok((Waiter { kind }, Waker { kind: WakeKind::Datagram(Arc::new(wake)) }))
    }

    /// Where the waker's datagrams come from, when it sends any: they are no one's messages.
    pub fn wake_source(&self) -> Option<SocketAddr> {
        match self.kind {
            WaitKind::InReceive { wake_from, .. } => Some(wake_from),
            WaitKind::Poll { .. } => None,
        }
    }

    /// Waits for the socket (true when readable) or a wake-up, at most `timeout`. A waiter in the
    /// receive only sets the timeout of the blocking read to come, and says "read".
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        match &mut self.kind {
            WaitKind::Poll { epoll, wake } => poll(epoll, wake, timeout),
            WaitKind::InReceive { socket, timeout: set, .. } => {
                let wanted = timeout.clamp(Duration::from_millis(1), LONGEST_RECEIVE_WAIT);
                // Set again only when the read would sleep 1% (at least 1 ms) past the deadline,
                // or wake before half of it: a system call per millisecond at worst, not per read.
                let slack = (wanted / 100).max(Duration::from_millis(1));
                if *set > wanted + slack || *set < wanted / 2 {
                    socket.set_read_timeout(Some(wanted))?;
                    *set = wanted;
                }
                Ok(true)
            }
        }
    }
}

/// A socket that can send to `socket`: to its own address, or to loopback when it is bound to
/// every address.
fn wake_socket(socket: &Socket) -> io::Result<UdpSocket> {
    let mut target = super::local_addr(socket)?;
    let (any, loopback): (IpAddr, IpAddr) = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into()),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into()),
    };
    if target.ip().is_unspecified() {
        target.set_ip(loopback);
    }
    let wake = UdpSocket::bind(SocketAddr::new(any, 0))?;
    wake.connect(target)?;
    wake.set_nonblocking(true)?;
    Ok(wake)
}

fn poll(epoll: &OwnedFd, wake: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    // Rounded up, so a deadline a few microseconds away is not a busy loop.
    let millis = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    // SAFETY: a live array of 2 events.
    let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 2, millis) };
    if n < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(error) };
    }
    let mut readable = false;
    for event in &events[..n as usize] {
        if event.u64 == WAKE_KEY {
            let mut count: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64; resets the eventfd.
            unsafe { libc::read(wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        } else {
            readable = true;
        }
    }
    Ok(readable)
}

/// Room for a timestamp and a drop counter, with headers and padding, per datagram.
const CONTROL_WORDS: usize = 16;

/// The `recvmmsg` headers of a receive batch, rebuilt before every call.
pub(super) struct RecvArrays {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    control: Vec<[u64; CONTROL_WORDS]>,
}

// SAFETY: the raw pointers inside are rebuilt before every call and only point into buffers
// owned by the same batch; nothing is shared between threads.
unsafe impl Send for RecvArrays {}

impl RecvArrays {
    pub(super) fn new(slots: usize) -> RecvArrays {
        // SAFETY: all-zero is a valid value for these plain C structs.
        unsafe {
            RecvArrays {
                headers: vec![zeroed(); slots],
                iovecs: vec![zeroed(); slots],
                names: vec![zeroed(); slots],
                control: vec![[0; CONTROL_WORDS]; slots],
            }
        }
    }

    /// One `recvmmsg` of up to `max` datagrams (waiting for the first when `block` and the socket
    /// blocks) into the `bufsize`-byte slots of `storage`.
    pub(super) fn recv(
        &mut self,
        socket: &Socket,
        storage: &mut [u8],
        bufsize: usize,
        max: usize,
        meta: &mut [Meta],
        block: bool,
    ) -> io::Result<usize> {
        let slots = max.min(self.headers.len());
        for i in 0..slots {
            self.iovecs[i] = libc::iovec { iov_base: storage[i * bufsize..].as_mut_ptr().cast(), iov_len: bufsize };
            let header = &mut self.headers[i];
            header.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = (CONTROL_WORDS * 8) as _;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                slots as libc::c_uint,
                // Blocking until the first datagram, and no longer: then whatever else is queued.
                if block { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT },
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, meta) in meta.iter_mut().enumerate().take(n) {
            *meta = self.result(i, bufsize);
        }
        Ok(n)
    }

    fn result(&self, index: usize, bufsize: usize) -> Meta {
        let header = &self.headers[index];
        let mut meta = Meta {
            len: (header.msg_len as usize).min(bufsize),
            from: socket_addr(&self.names[index]).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            time: None,
            drops: None,
        };
        // SAFETY: the CMSG macros walk the control buffer the kernel filled for this header
        // (msg_controllen was set to what it wrote).
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&header.msg_hdr) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is non-null and points into this header's control buffer.
            let (level, kind, data) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, libc::CMSG_DATA(cmsg)) };
            if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
                // SAFETY: an SCM_TIMESTAMPNS message carries the C library's timespec.
                let ts = unsafe { std::ptr::read_unaligned(data.cast::<libc::timespec>()) };
                meta.time = Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9);
            } else if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL {
                // SAFETY: an SO_RXQ_OVFL message carries a u32 counter.
                meta.drops = Some(u64::from(unsafe { std::ptr::read_unaligned(data.cast::<u32>()) }));
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&header.msg_hdr, cmsg) };
        }
        meta
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let mut copy = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_storage` is one of this platform's sockaddr types, and the kernel
    // filled it with an address of the family it names.
    let addr = unsafe {
        *copy.view_as::<libc::sockaddr_storage>() = *storage;
        SockAddr::new(copy, size_of::<libc::sockaddr_storage>() as libc::socklen_t)
    };
    addr.as_socket()
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
    pub(super) fn send(&mut self, socket: &Socket, out: &Outgoing, first: usize) -> io::Result<usize> {
        let count = (out.len() - first).min(SEND_SLOTS);
        self.names.clear();
        self.iovecs.clear();
        for index in first..first + count {
            let (payload, addr) = out.get(index);
            self.names.push(SockAddr::from(addr));
            self.iovecs.push(libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() });
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
        let n = unsafe {
            libc::sendmmsg(socket.as_raw_fd(), self.headers.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Waits until `socket` can take another datagram, or `timeout` passes.
pub fn wait_writable(socket: &Socket, timeout: Duration) {
    let mut fd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, millis) };
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn enable_error_queue(socket: &Socket, ipv6: bool) -> io::Result<bool> {
    let (level, name) =
        if ipv6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVERR) } else { (libc::IPPROTO_IP, libc::IP_RECVERR) };
    set_int_option(socket.as_raw_fd(), level, name)?;
    Ok(true)
}

pub fn drain_unreachable(socket: &Socket, unreachable: &mut Vec<SocketAddr>) -> usize {
    let fd = socket.as_raw_fd();
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

pub fn enable_ancillary(socket: &Socket) -> bool {
    let fd = socket.as_raw_fd();
    // Either may be missing on an old or restricted kernel: then the wall clock stamps the
    // datagrams, and SO_MEMINFO (or nothing) counts the drops.
    let _ = set_int_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS);
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL).is_ok() || kernel_drops_now(socket).is_some()
}

pub fn kernel_drops_now(socket: &Socket) -> Option<u64> {
    // SK_MEMINFO_VARS is 9 on current kernels; room to spare for later ones.
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len)
    };
    let index = libc::SK_MEMINFO_DROPS as usize;
    (rc == 0 && len as usize >= (index + 1) * 4).then(|| u64::from(info[index]))
}

pub fn socket_inode(socket: &Socket) -> Option<u64> {
    // SAFETY: all-zero is a valid stat, and fstat fills it for a valid descriptor.
    let mut stat: libc::stat = unsafe { zeroed() };
    if unsafe { libc::fstat(socket.as_raw_fd(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.st_ino as u64)
}
