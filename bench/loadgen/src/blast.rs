//! `blast` and `sink`: the collector benchmark's sender and its bare Rust receiver.
//!
//! `blast` sends numbered datagrams (4-byte big-endian sequence at offset 0, per source) from
//! S sources with `sendmmsg`, as fast as possible or at `--rate`; `sink` counts what one
//! blocking-`recvmmsg` socket receives: the ceiling a receiver on one core can reach.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::json::Json;
use crate::mmsg::RecvRing;
use crate::{bound_socket, Opts};

const SLOTS: usize = 64;

pub fn run_blast(opts: &Opts) -> Result<Json, String> {
    let target = opts.server()?;
    let sources: usize = opts.get("sources", 4)?;
    let count: u64 = opts.get("count", 1_000_000)?;
    let rate: f64 = opts.get("rate", 0.0)?;
    let size: usize = opts.get("payload", 16)?;
    let seconds = opts.seconds()?;
    if sources == 0 || sources > 1024 || !(4..=65507).contains(&size) {
        return Err("need 1..1024 sources and a payload of 4..65507 bytes".into());
    }
    let socks: Vec<UdpSocket> = (0..sources).map(|_| bound_socket(4 << 20)).collect::<Result<_, _>>()?;
    for s in &socks {
        s.connect(target).map_err(|e| format!("connect: {e}"))?;
    }
    let mut buffers = vec![vec![b'x'; size]; SLOTS];
    let mut next = vec![0u32; sources];
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut sent: u64 = 0;
    let mut source = 0;
    while sent < count && Instant::now() < deadline {
        let allowed = if rate > 0.0 { ((started.elapsed().as_secs_f64() * rate) as u64).min(count) } else { count };
        if allowed <= sent {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let k = ((allowed - sent) as usize).min(SLOTS);
        for (i, buf) in buffers.iter_mut().enumerate().take(k) {
            buf[..4].copy_from_slice(&next[source].wrapping_add(i as u32).to_be_bytes());
        }
        let n = send_all(socks[source].as_raw_fd(), &buffers[..k]);
        next[source] = next[source].wrapping_add(n as u32);
        sent += n as u64;
        source = (source + 1) % sources;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut j = Json::new();
    j.str("mode", "blast");
    j.str("label", &opts.label);
    j.int("sent", sent as i64);
    j.int("sources", sources as i64);
    j.num("seconds", elapsed);
    j.num("rate", sent as f64 / elapsed.max(1e-9));
    Ok(j)
}

/// One blocking `sendmmsg` of every buffer on a connected socket; returns how many went.
fn send_all(fd: libc::c_int, buffers: &[Vec<u8>]) -> usize {
    let mut iovs: Vec<libc::iovec> = buffers
        .iter()
        .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; buffers.len()];
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: headers, iovecs and buffers outlive the call.
    let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
    n.max(0) as usize
}

pub fn run_sink(opts: &Opts) -> Result<Json, String> {
    let port: u16 = opts.get("port", 0)?;
    let seconds = opts.seconds()?;
    let quiet: f64 = opts.get("quiet", 0.5)?;
    let size: usize = opts.get("payload", 2048)?;
    let sock = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], port))).map_err(|e| format!("bind: {e}"))?;
    crate::set_buffers(&sock, 4 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
    let mut j = Json::new();
    j.str("event", "listening");
    j.int("port", i64::from(sock.local_addr().map_err(|e| e.to_string())?.port()));
    println!("{}", j.finish());
    let mut ring = RecvRing::new(SLOTS, size);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut received: u64 = 0;
    while Instant::now() < deadline {
        let n = ring.recv_blocking(sock.as_raw_fd());
        let now = Instant::now();
        if n > 0 {
            first.get_or_insert(now);
            last = Some(now);
            received += n as u64;
        } else if last.is_some_and(|l| now.duration_since(l).as_secs_f64() > quiet) {
            break;
        }
    }
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let mut j = Json::new();
    j.str("mode", "sink");
    j.str("label", &opts.label);
    j.int("received", received as i64);
    j.num("seconds", span);
    j.num("rate", received as f64 / span.max(1e-9));
    Ok(j)
}
