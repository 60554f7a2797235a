//! Every other platform, and the `portable` build on Linux: readiness with the `polling` crate,
//! batches as loops of `recv_from`/`send_to`, no error queue, no ancillary data.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockAddr, Socket};

use super::{Meta, Outgoing};

const SOCKET_KEY: usize = 1;

pub struct Waiter {
    poller: Arc<polling::Poller>,
    events: polling::Events,
}

#[derive(Clone)]
pub struct Waker {
    poller: Arc<polling::Poller>,
}

impl Waker {
    pub fn wake(&self) {
        // A failed notify means the poller is gone, and with it the thread to wake.
        let _ = self.poller.notify();
    }
}

impl Waiter {
    pub fn new(socket: &Arc<Socket>) -> io::Result<(Waiter, Waker)> {
        let poller = Arc::new(polling::Poller::new()?);
        // SAFETY: every caller keeps the socket open (an `Arc` held by the same thread state)
        // until after the waiter is dropped, and the poller never outlives that state.
        unsafe { poller.add_with_mode(&**socket, polling::Event::readable(SOCKET_KEY), polling::PollMode::Level)? };
        Ok((Waiter { poller: Arc::clone(&poller), events: polling::Events::new() }, Waker { poller }))
    }

    /// The portable build always waits in the poller: a blocking read could not be followed by
    /// non-blocking ones where `MSG_DONTWAIT` does not exist.
    pub fn in_receive(socket: &Arc<Socket>) -> io::Result<(Waiter, Waker)> {
        Waiter::new(socket)
    }

    pub fn wake_source(&self) -> Option<SocketAddr> {
        None
    }

    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        self.events.clear();
        match self.poller.wait(&mut self.events, Some(timeout)) {
            Ok(_) => Ok(self.events.iter().any(|e| e.key == SOCKET_KEY)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }
}

pub(super) struct RecvArrays;

impl RecvArrays {
    pub(super) fn new(_slots: usize) -> RecvArrays {
        RecvArrays
    }

    /// Up to `max` calls of `recv_from` into the `bufsize`-byte slots of `storage`. Each call may
    /// write one byte past its slot (the next slot's first, or the spare byte at the end of
    /// `storage`): a datagram that fills it was longer than `bufsize`, and is reported cut.
    pub(super) fn recv(
        &mut self,
        socket: &Socket,
        storage: &mut [u8],
        bufsize: usize,
        max: usize,
        meta: &mut [Meta],
        _block: bool,
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < max.min(meta.len()) {
            let slot = &mut storage[n * bufsize..(n + 1) * bufsize + 1];
            // SAFETY: u8 and MaybeUninit<u8> have the same layout, and the slot is initialised.
            let uninit = unsafe { &mut *(slot as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match socket.recv_from(uninit) {
                Ok((len, addr)) => {
                    meta[n] = Meta {
                        len: len.min(bufsize),
                        from: addr.as_socket().unwrap_or(meta[n].from),
                        truncated: len > bufsize,
                        time: None,
                        drops: None,
                    };
                    n += 1;
                }
                Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        Ok(n)
    }
}

#[derive(Default)]
pub(super) struct SendArrays;

impl SendArrays {
    /// `send_to` for each entry of `out` from `first` on, until one would block.
    pub(super) fn send(&mut self, socket: &Socket, out: &Outgoing, first: usize) -> io::Result<usize> {
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

/// No portable way to wait for room in a send buffer: a short pause.
pub fn wait_writable(_socket: &Socket, timeout: Duration) {
    std::thread::sleep(timeout.min(Duration::from_millis(1)));
}

pub fn enable_error_queue(_socket: &Socket, _ipv6: bool) -> io::Result<bool> {
    Ok(false)
}

pub fn drain_unreachable(_socket: &Socket, _unreachable: &mut Vec<SocketAddr>) -> usize {
    0
}

pub fn enable_ancillary(_socket: &Socket) -> bool {
    false
}

pub fn kernel_drops_now(_socket: &Socket) -> Option<u64> {
    None
}

pub fn socket_inode(_socket: &Socket) -> Option<u64> {
    None
}
