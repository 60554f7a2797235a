//! Batched receive with per-datagram ancillary data: on Linux one `recvmmsg` returns up to 64
//! datagrams, each with its kernel receive time (`SO_TIMESTAMPNS`, the 64-bit `_NEW` form where
//! the C library's `time_t` is 64-bit) and the socket's drop counter (`SO_RXQ_OVFL`).
//! Elsewhere: a loop of `recv_from`, stamped with the wall clock.

use std::io;
use std::net::SocketAddr;

use socket2::Socket;

use crate::worker::wall_clock;

/// Datagrams read by one call.
pub struct Received {
    bufsize: usize,
    storage: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    truncated: Vec<bool>,
    times: Vec<f64>,
    count: usize,
    /// The kernel's count of datagrams dropped on this socket, as of the newest datagram.
    pub kernel_drops: Option<u64>,
    #[cfg(target_os = "linux")]
    sys: linux::Arrays,
}

/// One datagram of a [`Received`].
pub struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    pub truncated: bool,
    /// Wall-clock seconds.
    pub time: f64,
}

impl Received {
    pub fn new(slots: usize, bufsize: usize) -> Received {
        let slots = slots.max(1);
        Received {
            bufsize,
            storage: vec![0; slots * bufsize],
            lens: vec![0; slots],
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); slots],
            truncated: vec![false; slots],
            times: vec![0.0; slots],
            count: 0,
            kernel_drops: None,
            #[cfg(target_os = "linux")]
            sys: linux::Arrays::new(slots),
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
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
            time: self.times[index],
        }
    }

    /// Reads up to `max` queued datagrams without blocking; `Ok(0)` when none is queued.
    pub fn recv(&mut self, socket: &Socket, max: usize) -> io::Result<usize> {
        self.count = 0;
        let max = max.clamp(1, self.slots());
        match self.recv_inner(socket, max) {
            Ok(n) => {
                self.count = n;
                Ok(n)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(0),
            // An ICMP error about something this socket never sent: nothing to read.
            Err(e) if crate::net::is_deferred_icmp_error(&e) => Ok(0),
            Err(e) => Err(e),
        }
    }

    #[cfg(target_os = "linux")]
    fn recv_inner(&mut self, socket: &Socket, max: usize) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = self.sys.recvmmsg(socket.as_raw_fd(), &mut self.storage, self.bufsize, max)?;
        let now = wall_clock();
        for i in 0..n {
            let result = self.sys.result(i, self.bufsize);
            self.lens[i] = result.len;
            self.addrs[i] = result.from;
            self.truncated[i] = result.truncated;
            self.times[i] = result.time.unwrap_or(now);
            if result.drops.is_some() {
                self.kernel_drops = result.drops;
            }
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_inner(&mut self, socket: &Socket, max: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            let start = n * self.bufsize;
            let slot = &mut self.storage[start..start + self.bufsize];
            // SAFETY: u8 and MaybeUninit<u8> have the same layout, and the slot is initialised.
            let uninit = unsafe { &mut *(slot as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            match socket.recv_from_with_flags(uninit, 0) {
                Ok((len, addr)) => {
                    self.lens[n] = len.min(self.bufsize);
                    // Without MSG_TRUNC a datagram that filled the buffer may have been longer.
                    self.truncated[n] = false;
                    self.addrs[n] = addr.as_socket().unwrap_or(self.addrs[n]);
                    self.times[n] = wall_clock();
                    n += 1;
                }
                Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        Ok(n)
    }
}

/// Asks the kernel for receive timestamps and drop counts on `socket`. Returns whether the
/// drop count is available (false off Linux).
pub fn enable_ancillary(socket: &Socket) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        // Either may be missing on an old or restricted kernel: then the wall clock stamps the
        // datagrams, and SO_MEMINFO (or nothing) counts the drops.
        linux::set_flag(fd, libc::SO_TIMESTAMPNS);
        linux::set_flag(fd, libc::SO_RXQ_OVFL) || linux::meminfo_drops(fd).is_some()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        false
    }
}

/// The kernel's current count of datagrams dropped on `socket`, where the platform tells.
pub fn kernel_drops_now(socket: &Socket) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        linux::meminfo_drops(socket.as_raw_fd())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::SocketAddr;
    use std::os::fd::RawFd;

    use socket2::{SockAddr, SockAddrStorage};

    /// Room for a timestamp and a drop counter, with headers and padding, per datagram.
    const CONTROL_WORDS: usize = 16;

    pub(super) struct Arrays {
        headers: Vec<libc::mmsghdr>,
        iovecs: Vec<libc::iovec>,
        names: Vec<libc::sockaddr_storage>,
        control: Vec<[u64; CONTROL_WORDS]>,
    }

    // SAFETY: the raw pointers inside are rebuilt before every call and only point into buffers
    // owned by the same value; nothing is shared between threads.
    unsafe impl Send for Arrays {}

    pub(super) struct Result {
        pub len: usize,
        pub from: SocketAddr,
        pub truncated: bool,
        pub time: Option<f64>,
        pub drops: Option<u64>,
    }

    pub(super) fn set_flag(fd: RawFd, name: libc::c_int) -> bool {
        let on: libc::c_int = 1;
        // SAFETY: a c_int option value of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }

    pub(super) fn meminfo_drops(fd: RawFd) -> Option<u64> {
        // SK_MEMINFO_VARS is 9 on current kernels; room to spare for later ones.
        let mut info = [0u32; 16];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`.
        let rc =
            unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
        let index = libc::SK_MEMINFO_DROPS as usize;
        (rc == 0 && len as usize >= (index + 1) * 4).then(|| u64::from(info[index]))
    }

    impl Arrays {
        pub(super) fn new(slots: usize) -> Arrays {
            // SAFETY: all-zero is a valid value for these plain C structs.
            unsafe {
                Arrays {
                    headers: vec![zeroed(); slots],
                    iovecs: vec![zeroed(); slots],
                    names: vec![zeroed(); slots],
                    control: vec![[0; CONTROL_WORDS]; slots],
                }
            }
        }

        pub(super) fn recvmmsg(
            &mut self,
            fd: RawFd,
            storage: &mut [u8],
            bufsize: usize,
            max: usize,
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

        pub(super) fn result(&self, index: usize, bufsize: usize) -> Result {
            let header = &self.headers[index];
            let mut result = Result {
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
                    result.time = Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9);
                } else if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL {
                    // SAFETY: an SO_RXQ_OVFL message carries a u32 counter.
                    result.drops = Some(u64::from(unsafe { std::ptr::read_unaligned(data.cast::<u32>()) }));
                }
                // SAFETY: as above.
                cmsg = unsafe { libc::CMSG_NXTHDR(&header.msg_hdr, cmsg) };
            }
            result
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
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::net::{local_addr, udp_socket, SocketOptions, Waiter};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn stamps_each_datagram_and_counts_the_kernels_drops() {
        let options = SocketOptions { rcvbuf: Some(4096), sndbuf: None };
        let receiver = Arc::new(udp_socket("127.0.0.1:0".parse().unwrap(), true, options).unwrap());
        let drops_known = enable_ancillary(&receiver);
        let to = local_addr(&receiver).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = wall_clock();
        // Far more than a 4 KiB buffer holds: the kernel drops most of them.
        for i in 0..2000u32 {
            sender.send_to(&i.to_be_bytes(), to).unwrap();
        }
        let (mut waiter, _waker) = Waiter::new(&receiver).unwrap();
        let mut rx = Received::new(64, 16);
        let mut got = 0;
        let mut times = Vec::new();
        while waiter.wait(Duration::from_millis(200)).unwrap() {
            while rx.recv(&receiver, 64).unwrap() > 0 {
                got += rx.len();
                times.extend((0..rx.len()).map(|i| rx.get(i).time));
            }
        }
        assert!(got > 0 && got < 2000, "{got}");
        assert!(times.iter().all(|&t| t >= before - 1.0 && t <= wall_clock() + 1.0));
        if cfg!(target_os = "linux") {
            assert!(drops_known);
            assert_eq!(kernel_drops_now(&receiver), Some(2000 - got as u64));
            // The cmsg carries the count as of each datagram's queueing: here every datagram was
            // queued before the first drop, so only SO_MEMINFO knows.
            assert!(rx.kernel_drops.unwrap_or(0) <= 2000 - got as u64);
        }
    }
}
