//! recvmmsg/sendmmsg with buffers allocated once.

use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Receives up to `slots` datagrams per call into fixed buffers.
pub struct RecvRing {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_in>,
    slot: usize,
    with_names: bool,
}

impl RecvRing {
    /// For connected sockets: no source addresses.
    pub fn new(slots: usize, slot: usize) -> RecvRing {
        RecvRing::build(slots, slot, false)
    }

    /// Keeps each datagram's IPv4 source address.
    pub fn with_names(slots: usize, slot: usize) -> RecvRing {
        RecvRing::build(slots, slot, true)
    }

    fn build(slots: usize, slot: usize, with_names: bool) -> RecvRing {
        // SAFETY: all-zero is valid for these C structs.
        let mut r = RecvRing {
            hdrs: vec![unsafe { zeroed() }; slots],
            iovs: vec![unsafe { zeroed() }; slots],
            bufs: vec![0u8; slots * slot],
            names: vec![unsafe { zeroed() }; slots],
            slot,
            with_names,
        };
        // The vectors never grow, so these pointers stay valid as long as `r` lives.
        for i in 0..slots {
            r.iovs[i] = libc::iovec { iov_base: r.bufs[i * slot..].as_mut_ptr().cast(), iov_len: slot };
        }
        for i in 0..slots {
            let h = &mut r.hdrs[i].msg_hdr;
            h.msg_iov = &mut r.iovs[i];
            h.msg_iovlen = 1;
        }
        r
    }

    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    fn reset(&mut self) {
        for i in 0..self.hdrs.len() {
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_flags = 0;
            if self.with_names {
                h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
        }
    }

    /// Non-blocking; returns how many datagrams were read (0 when none).
    pub fn recv(&mut self, fd: libc::c_int) -> usize {
        self.call(fd, libc::MSG_DONTWAIT)
    }

    /// Blocks (up to the socket's SO_RCVTIMEO) for the first datagram, then takes what is queued.
    pub fn recv_blocking(&mut self, fd: libc::c_int) -> usize {
        self.call(fd, libc::MSG_WAITFORONE)
    }

    fn call(&mut self, fd: libc::c_int, flags: libc::c_int) -> usize {
        self.reset();
        // SAFETY: every header points at live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as libc::c_uint, flags, std::ptr::null_mut())
        };
        if n < 0 {
            0
        } else {
            n as usize
        }
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        &self.bufs[i * self.slot..i * self.slot + len]
    }

    pub fn get_from(&self, i: usize) -> (&[u8], SocketAddr) {
        let sin = &self.names[i];
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        (self.get(i), SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
    }
}

/// Sends one payload many times in one call.
pub struct SendBatch {
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_in>,
}

impl SendBatch {
    pub fn new(slots: usize) -> SendBatch {
        // SAFETY: all-zero is valid for these C structs.
        SendBatch { hdrs: vec![unsafe { zeroed() }; slots], names: vec![unsafe { zeroed() }; slots] }
    }

    /// `count` copies of `payload` on a connected socket (non-blocking); returns how many went.
    pub fn send_connected(&mut self, fd: libc::c_int, payload: &[u8], count: usize) -> usize {
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
        let mut done = 0;
        while done < count {
            let k = (count - done).min(self.hdrs.len());
            for h in &mut self.hdrs[..k] {
                h.msg_hdr.msg_name = std::ptr::null_mut();
                h.msg_hdr.msg_namelen = 0;
                h.msg_hdr.msg_iov = &mut iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_len = 0;
            }
            // SAFETY: headers and payload outlive the call.
            let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), k as libc::c_uint, libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            done += n as usize;
            if (n as usize) < k {
                break;
            }
        }
        done
    }

    /// `payload` to each IPv4 address in `to` (at most `slots` of them), blocking.
    pub fn send_to(&mut self, fd: libc::c_int, payload: &[u8], to: &[SocketAddr]) -> std::io::Result<usize> {
        let k = to.len().min(self.hdrs.len());
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
        for i in 0..k {
            let SocketAddr::V4(a) = to[i] else { continue };
            self.names[i] = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
        // SAFETY: headers, names and payload outlive the call.
        let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), k as libc::c_uint, 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
