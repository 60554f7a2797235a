//! N UDP sockets bound to one address with `SO_REUSEPORT`, so the kernel spreads sources over
//! N socket threads and keeps each source on one of them.
//!
//! Shared by every object with a `workers=N` option. A platform without `SO_REUSEPORT` gets one socket for `count == 1` and a clear `Unsupported` error otherwise;
//! [`supported`] lets a caller fall back to one worker instead.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::net::{local_addr, udp_socket, SocketOptions};

/// How often a free port found for `port=0` may be taken by somebody else before we give up.
const PORT_ATTEMPTS: usize = 8;

/// True where [`bind_group`] can bind more than one socket. Not in the `portable` build, which
/// stands for the platforms whose `SO_REUSEPORT` is missing or does not spread datagrams.
pub fn supported() -> bool {
    cfg!(all(unix, not(target_os = "solaris"), not(target_os = "illumos"), not(feature = "portable")))
}

/// Binds `count` non-blocking sockets to `addr`. `count == 1` is a plain socket, as every other
/// server binds it. For more, a busy port is still an `AddrInUse` error (a plain socket is
/// bound first to check, so we never join another program's `SO_REUSEPORT` group), and port 0
/// picks one free port for all of them.
pub fn bind_group(addr: SocketAddr, count: usize, options: SocketOptions) -> io::Result<Vec<Socket>> {
    if count == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a socket group needs at least one socket"));
    }
    if count == 1 {
        return Ok(vec![udp_socket(addr, true, options)?]);
    }
    if !supported() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("workers={count} needs SO_REUSEPORT, which this platform (or build) lacks; use workers=1"),
        ));
    }
    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        // The probe: EADDRINUSE here is the busy-port error the caller should see.
        let probe = udp_socket(addr, true, SocketOptions::default())?;
        let port = local_addr(&probe)?.port();
        drop(probe);
        let target = SocketAddr::new(addr.ip(), port);
        match (0..count).map(|_| reuseport_socket(target, options)).collect::<io::Result<Vec<_>>>() {
            Ok(sockets) => return Ok(sockets),
            // Somebody took the port between the probe and the group: try another (port 0 only).
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

#[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
fn reuseport_socket(addr: SocketAddr, options: SocketOptions) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if let Some(size) = options.rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = options.sndbuf {
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(not(all(unix, not(target_os = "solaris"), not(target_os = "illumos"))))]
fn reuseport_socket(addr: SocketAddr, options: SocketOptions) -> io::Result<Socket> {
    let _ = (addr, options, Domain::IPV4, Type::DGRAM, Protocol::UDP);
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::UdpSocket;
    use std::time::Duration;

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn one_socket_needs_no_reuseport() {
        let group = bind_group(loopback(), 1, SocketOptions::default()).unwrap();
        assert_eq!(group.len(), 1);
        assert_ne!(local_addr(&group[0]).unwrap().port(), 0);
        assert_eq!(
            bind_group(loopback(), 0, SocketOptions::default()).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_group_shares_one_port_and_the_kernel_spreads_sources() {
        if !supported() {
            let error = bind_group(loopback(), 4, SocketOptions::default()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::Unsupported);
            assert!(error.to_string().contains("workers=1"));
            return;
        }
        let group = bind_group(loopback(), 4, SocketOptions::default()).unwrap();
        let ports: Vec<u16> = group.iter().map(|s| local_addr(s).unwrap().port()).collect();
        assert!(ports.iter().all(|&p| p == ports[0] && p != 0), "{ports:?}");
        let target = local_addr(&group[0]).unwrap();
        let senders: Vec<UdpSocket> = (0..32).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for sender in &senders {
            sender.send_to(b"x", target).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut per_socket = Vec::new();
        for socket in &group {
            let mut count = 0;
            let mut buf = [std::mem::MaybeUninit::new(0u8); 8];
            while socket.recv_from(&mut buf).is_ok() {
                count += 1;
            }
            per_socket.push(count);
        }
        assert_eq!(per_socket.iter().sum::<usize>(), 32);
        assert!(per_socket.iter().filter(|&&c| c > 0).count() >= 2, "{per_socket:?}");
    }

    #[test]
    fn a_busy_port_is_an_error_not_a_shared_group() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        for count in [1, 3] {
            let error = bind_group(addr, count, SocketOptions::default()).unwrap_err();
            let expected =
                if supported() || count == 1 { io::ErrorKind::AddrInUse } else { io::ErrorKind::Unsupported };
            assert_eq!(error.kind(), expected, "{count} sockets");
        }
    }
}
