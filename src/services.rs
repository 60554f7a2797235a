//! The tutorial's two request/response servers: the upper-casing echo server (S1) and the
//! `strftime` time server (S4), each on its own socket thread that reads in batches and answers
//! every datagram to its sender.
//!
//! The time server's answer is byte for byte what CPython's `time.strftime(fmt)` returns in the
//! same process: on Linux CPython is built with `HAVE_WCSFTIME`, so it converts the format to
//! `wchar_t`, calls `wcsftime` on `localtime_r(time(NULL))` with a buffer of 1024 characters that
//! it doubles until the answer fits or the buffer reaches 256 times the format's length (then the
//! answer is `''`). [`Strftime`] repeats exactly that loop, in the same units.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use socket2::Socket;

use crate::auth::{AddressGuard, Verdict};
pub use crate::config::ServiceConfig;
use crate::config::RECV_BATCH;
use crate::error::Result;
use crate::events::{self, Event, EventReceiver, EventSender, Route};
use crate::net::{self, RecvBatch, Waiter};
use crate::protocol::MAX_DATAGRAM;
use crate::stats::{Counters, DropReason};
use crate::worker::{wall_clock, Control, Endpoint, Worker};

/// What the seed's time server uses for an empty datagram.
pub const DEFAULT_TIME_FORMAT: &str = "%Y-%m-%d %X";
/// Batches handled per wake-up before the stop flag gets a look in.
const BATCHES_PER_WAKE: usize = 64;
/// How long an idle server sleeps; `stop()` wakes it at once.
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// The largest answer buffer, in characters, the time server grows to. CPython would grow to
/// 256 times the format's length; this is that bound for formats of up to 1024 characters (the
/// default `bufsize`), and far more than any answer that fits one datagram.
const MAX_WIDE_BUFFER: usize = 1 << 18;

/// Which program a [`ServiceServer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Answers each datagram with `data.upper()` (ASCII letters only, as `bytes.upper()`).
    Echo,
    /// Answers each datagram with `time.strftime(fmt)` of the local time.
    Time,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Echo => "EchoServer",
            Service::Time => "TimeServer",
        }
    }
}

/// Why the time server answered with an error instead of a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// The datagram is not valid UTF-8 (the seed dies of a `UnicodeDecodeError`).
    NotUtf8,
    /// The format holds a NUL character (CPython raises `ValueError`).
    Nul,
    /// The answer is longer than one UDP datagram.
    TooLong,
    /// The C library produced something that is not text, or no local time.
    Unavailable,
}

impl TimeError {
    /// The short answer sent instead of a time.
    pub fn answer(self) -> &'static [u8] {
        match self {
            TimeError::NotUtf8 => b"error: format is not UTF-8",
            TimeError::Nul => b"error: format contains a NUL byte",
            TimeError::TooLong => b"error: answer does not fit in one datagram",
            TimeError::Unavailable => b"error: local time unavailable",
        }
    }
}

/// Python's `bytes.upper()`: ASCII a-z only, every other byte as is.
pub fn upper_into(data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend(data.iter().map(u8::to_ascii_uppercase));
}

/// CPython's `time.strftime`, with buffers reused from one request to the next.
#[derive(Default)]
pub struct Strftime {
    format: Vec<libc::wchar_t>,
    buffer: Vec<libc::wchar_t>,
    /// The last `time(NULL)` and its `localtime_r`, so a burst converts the clock once a second.
    cached: Option<(libc::time_t, libc::tm)>,
}

// SAFETY: `libc::tm` holds a `tm_zone` pointer into the C library's static zone names, which
// stay valid for the life of the process and are only read.
unsafe impl Send for Strftime {}

impl Strftime {
    /// Writes the UTF-8 answer of the time server for one request (`b""` means
    /// [`DEFAULT_TIME_FORMAT`]) into `out`: `time.strftime(fmt)` of the local time now.
    pub fn answer(&mut self, request: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), TimeError> {
        let format = if request.is_empty() {
            DEFAULT_TIME_FORMAT
        } else {
            std::str::from_utf8(request).map_err(|_| TimeError::NotUtf8)?
        };
        let tm = self.local_now()?;
        self.format_tm(format, &tm, out)
    }

    fn local_now(&mut self) -> std::result::Result<libc::tm, TimeError> {
        // SAFETY: time accepts a null pointer.
        let now = unsafe { libc::time(std::ptr::null_mut()) };
        if let Some((at, tm)) = self.cached {
            if at == now {
                return Ok(tm);
            }
        }
        // SAFETY: all-zero is a valid tm; localtime_r fills it and is thread-safe.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
            return Err(TimeError::Unavailable);
        }
        self.cached = Some((now, tm));
        Ok(tm)
    }

    /// `time.strftime(format, tm)` as CPython computes it, UTF-8 encoded into `out`.
    pub fn format_tm(&mut self, format: &str, tm: &libc::tm, out: &mut Vec<u8>) -> std::result::Result<(), TimeError> {
        out.clear();
        if format.contains('\0') {
            return Err(TimeError::Nul);
        }
        self.format.clear();
        self.format.extend(format.chars().map(|c| c as u32 as libc::wchar_t));
        let length = self.format.len();
        self.format.push(0);
        // CPython: `for (i = 1024; ; i += i)`, stop when something was written or when
        // `i >= 256 * fmtlen` (then an empty answer is the answer).
        let mut size = 1024usize;
        let written = loop {
            if size > MAX_WIDE_BUFFER {
                return Err(TimeError::TooLong);
            }
            if self.buffer.len() < size {
                self.buffer.resize(size, 0);
            }
            // SAFETY: the buffer holds `size` characters, the format is NUL-terminated and
            // `tm` is a valid broken-down time.
            let n = unsafe { wcsftime(self.buffer.as_mut_ptr(), size, self.format.as_ptr(), tm) };
            if n > 0 || size >= 256 * length {
                break n;
            }
            size += size;
        };
        for &unit in &self.buffer[..written] {
            let c = char::from_u32(unit as u32).ok_or(TimeError::Unavailable)?;
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            if out.len() > MAX_DATAGRAM {
                out.clear();
                return Err(TimeError::TooLong);
            }
        }
        Ok(())
    }
}

extern "C" {
    // C99 and POSIX; the libc crate does not declare it.
    fn wcsftime(
        s: *mut libc::wchar_t,
        max: libc::size_t,
        format: *const libc::wchar_t,
        tm: *const libc::tm,
    ) -> libc::size_t;
}

/// A point-in-time copy of a service's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Datagrams read from the socket.
    pub received: u64,
    /// Requests answered normally.
    pub answered: u64,
    /// Requests answered with an error (time server: not UTF-8, NUL, answer too long).
    pub bad_requests: u64,
    /// Answers the kernel accepted for sending.
    pub sent: u64,
    /// Requests longer than `bufsize`, cut as `recvfrom(bufsize)` cuts them.
    pub truncated: u64,
    pub dropped: Vec<(DropReason, u64)>,
    /// Failed sends by errno.
    pub send_errors: BTreeMap<i32, u64>,
    /// Datagrams the kernel dropped because the socket's receive buffer was full (Linux,
    /// from `/proc/net/udp`); `None` where it cannot be known.
    pub kernel_drops: Option<u64>,
}

impl ServiceStats {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}

struct Shared {
    counters: Counters,
    bad_requests: AtomicU64,
    /// The socket's inode and family, to find it in `/proc/net/udp{,6}`.
    inode: Option<u64>,
    ipv6: bool,
    /// The kernel's drop count read just before the socket was closed.
    final_kernel_drops: Mutex<Option<u64>>,
}

impl Shared {
    fn kernel_drops(&self) -> Option<u64> {
        if let Some(last) = *self.final_kernel_drops.lock() {
            return Some(last);
        }
        kernel_drops(self.inode?, self.ipv6)
    }
}

/// A running echo or time server. Dropping it stops it.
pub struct ServiceServer {
    service: Service,
    shared: Arc<Shared>,
    local: SocketAddr,
    events: Option<EventReceiver>,
    worker: Worker,
}

impl ServiceServer {
    /// Binds and starts the socket thread.
    pub fn start(service: Service, config: ServiceConfig) -> Result<ServiceServer> {
        config.validate()?;
        let bind = net::resolve(&config.host, config.port)?;
        let socket = Arc::new(net::udp_socket(bind, true, config.socket)?);
        let local = net::local_addr(&socket)?;
        let (waiter, waker) = Waiter::new(&socket)?;
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            bad_requests: AtomicU64::new(0),
            inode: net::socket_inode(&socket),
            ipv6: local.is_ipv6(),
            final_kernel_drops: Mutex::new(None),
        });
        let (sender, events) = match config.events {
            Some(size) => {
                let (sender, receiver) = events::channel(size, Route::default());
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        let mut service_loop = ServiceLoop {
            service,
            socket,
            waiter,
            shared: Arc::clone(&shared),
            recv: RecvBatch::new(RECV_BATCH, config.bufsize),
            out: Vec::with_capacity(config.bufsize.max(256)),
            strftime: Strftime::default(),
            events: sender,
            guard: config.validate.then(AddressGuard::default),
        };
        let name = match service {
            Service::Echo => "chatudp-echo",
            Service::Time => "chatudp-time",
        };
        let worker = Worker::spawn(name, waker, move |control| service_loop.run(control))?;
        Ok(ServiceServer { service, shared, local, events, worker })
    }

    pub fn echo(config: ServiceConfig) -> Result<ServiceServer> {
        ServiceServer::start(Service::Echo, config)
    }

    pub fn time(config: ServiceConfig) -> Result<ServiceServer> {
        ServiceServer::start(Service::Time, config)
    }

    pub fn service(&self) -> Service {
        self.service
    }

    pub fn stats(&self) -> ServiceStats {
        let base = self.shared.counters.snapshot();
        ServiceStats {
            received: base.received,
            answered: base.relayed,
            bad_requests: self.shared.bad_requests.load(Relaxed),
            sent: base.sent,
            truncated: base.truncated,
            dropped: base.dropped,
            send_errors: base.send_errors,
            kernel_drops: self.shared.kernel_drops(),
        }
    }
}

impl Endpoint for ServiceServer {
    fn worker(&self) -> &Worker {
        &self.worker
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn event_queue(&self) -> Option<&EventReceiver> {
        self.events.as_ref()
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

struct ServiceLoop {
    service: Service,
    socket: Arc<Socket>,
    waiter: Waiter,
    shared: Arc<Shared>,
    recv: RecvBatch,
    out: Vec<u8>,
    strftime: Strftime,
    events: Option<EventSender>,
    guard: Option<AddressGuard>,
}

impl ServiceLoop {
    fn run(&mut self, control: &Control) {
        while !control.is_stopping() {
            match self.waiter.wait(IDLE_WAIT) {
                Ok(true) => self.drain(control),
                Ok(false) => {}
                // A poller that cannot wait any more leaves nothing to do but stop.
                Err(_) => break,
            }
        }
        if let Some(inode) = self.shared.inode {
            *self.shared.final_kernel_drops.lock() = kernel_drops(inode, self.shared.ipv6);
        }
    }

    fn drain(&mut self, control: &Control) {
        for _ in 0..BATCHES_PER_WAKE {
            if control.is_stopping() {
                return;
            }
            match self.recv.recv(&self.socket) {
                Ok(0) => return,
                Ok(n) => self.handle_batch(n),
                // ICMP errors and the like: the socket itself is fine, carry on.
                Err(_) => return,
            }
        }
    }

    fn handle_batch(&mut self, count: usize) {
        let shared = &*self.shared;
        let counters = &shared.counters;
        counters.count_reads(&self.recv);
        let now = wall_clock();
        for index in 0..count {
            let datagram = self.recv.get(index);
            if let Some(guard) = &mut self.guard {
                match guard.check(datagram.data, datagram.from, now) {
                    Verdict::Serve => {}
                    Verdict::Validated => continue,
                    Verdict::Challenge(challenge) => {
                        counters.drop_one(DropReason::Auth);
                        match net::send_one(&self.socket, &challenge, Some(datagram.from)) {
                            Ok(_) => Counters::add(&counters.sent, 1),
                            Err(e) => counters.send_failed(e.raw_os_error().unwrap_or(0)),
                        }
                        continue;
                    }
                    Verdict::Drop => {
                        counters.drop_one(DropReason::Auth);
                        continue;
                    }
                }
            }
            if let Some(events) = &self.events {
                events.emit(Event::Message { data: datagram.data.to_vec(), from: datagram.from }, counters);
            }
            let good = match self.service {
                Service::Echo => {
                    upper_into(datagram.data, &mut self.out);
                    true
                }
                Service::Time => match self.strftime.answer(datagram.data, &mut self.out) {
                    Ok(()) => true,
                    Err(e) => {
                        self.out.clear();
                        self.out.extend_from_slice(e.answer());
                        false
                    }
                },
            };
            if good {
                Counters::add(&counters.relayed, 1);
            } else {
                shared.bad_requests.fetch_add(1, Relaxed);
            }
            match net::send_one(&self.socket, &self.out, Some(datagram.from)) {
                Ok(_) => Counters::add(&counters.sent, 1),
                Err(e) => counters.send_failed(e.raw_os_error().unwrap_or(0)),
            }
        }
    }
}

/// The `drops` column of `/proc/net/udp` (or `udp6`) for the socket with this inode: datagrams
/// the kernel discarded, mostly because the receive buffer was full.
fn kernel_drops(inode: u64, ipv6: bool) -> Option<u64> {
    let path = if ipv6 { "/proc/net/udp6" } else { "/proc/net/udp" };
    let table = std::fs::read_to_string(path).ok()?;
    parse_kernel_drops(&table, inode)
}

fn parse_kernel_drops(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if fields.len() >= 13 && fields[9].parse::<u64>().ok()? == inode {
            fields[12].parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ChatError;
    use crate::protocol::DEFAULT_BUFSIZE;
    use std::net::UdpSocket;
    use std::time::Instant;

    fn start(service: Service) -> ServiceServer {
        ServiceServer::start(service, ServiceConfig::new("127.0.0.1", 0)).unwrap()
    }

    fn peer() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        socket
    }

    fn ask(socket: &UdpSocket, server: &ServiceServer, request: &[u8]) -> Vec<u8> {
        socket.send_to(request, server.local_addr()).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (n, from) = socket.recv_from(&mut buf).expect("expected an answer");
        assert_eq!(from, server.local_addr());
        buf.truncate(n);
        buf
    }

    /// A fixed broken-down time, independent of the time zone: Tue 2024-03-05 07:08:09.
    fn fixed_tm() -> libc::tm {
        let t: libc::time_t = 1_709_622_489;
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        assert!(!unsafe { libc::gmtime_r(&t, &mut tm) }.is_null());
        tm
    }

    fn format(format: &str) -> std::result::Result<String, TimeError> {
        let mut out = Vec::new();
        Strftime::default().format_tm(format, &fixed_tm(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn upper_changes_ascii_letters_only() {
        let mut out = Vec::new();
        upper_into(b"hello, W\xc3\xa9lt \xff z{", &mut out);
        assert_eq!(out, b"HELLO, W\xc3\xa9LT \xff Z{");
        upper_into(b"", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn strftime_follows_cpython() {
        assert_eq!(format("%Y-%m-%d %X").unwrap(), "2024-03-05 07:08:09".to_owned());
        assert_eq!(format("%a %A %b %B %j %p").unwrap(), "Tue Tuesday Mar March 065 AM");
        assert_eq!(format("%F %T %e|%5Y").unwrap(), "2024-03-05 07:08:09  5|02024");
        // Literal text, unknown directives, a lone `%` and non-ASCII text pass through.
        assert_eq!(format("时间 %Q 100%").unwrap(), "时间 %Q 100%");
        assert_eq!(format("").unwrap(), "");
        // CPython's buffer stops at 256 characters per format character: then `''`.
        assert_eq!(format("%2000Y").unwrap().len(), 2000);
        assert_eq!(format("%3000Y").unwrap(), "");
        assert_eq!(format("ee%2000Y").unwrap().len(), 2002);
        assert_eq!(format("ee%2100Y").unwrap(), "");
        // ... counted in characters (wcsftime), not bytes.
        assert_eq!(format("éé%2100Y").unwrap(), "");
        assert_eq!(format("a\0b"), Err(TimeError::Nul));
        // An answer longer than a datagram, from a format long enough for CPython to return it.
        let long = format!("%65600Y{}", "x".repeat(300));
        assert_eq!(format(&long), Err(TimeError::TooLong));
        let fits = "y".repeat(MAX_DATAGRAM);
        assert_eq!(format(&fits).unwrap(), fits);
    }

    #[test]
    fn echo_server_answers_upper_and_cuts_long_datagrams() {
        let server = start(Service::Echo);
        let client = peer();
        assert_eq!(ask(&client, &server, b"hello \xff"), b"HELLO \xff");
        assert_eq!(ask(&client, &server, b""), b"");
        let long = vec![b'a'; MAX_DATAGRAM];
        assert_eq!(ask(&client, &server, &long), vec![b'A'; DEFAULT_BUFSIZE]);
        // The answer can arrive before the socket thread counts it as sent.
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.stats().sent < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stats = server.stats();
        assert_eq!((stats.received, stats.answered, stats.sent, stats.truncated), (3, 3, 3, 1));
        if crate::net::LINUX_IO {
            assert_eq!(stats.kernel_drops, Some(0));
        }
        let started = Instant::now();
        server.stop();
        server.stop();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(!server.is_running());
        // The port is free again once stopped.
        let port = server.local_addr().port();
        UdpSocket::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn time_server_answers_and_survives_bad_requests() {
        let server = start(Service::Time);
        let client = peer();
        let answer = String::from_utf8(ask(&client, &server, b"")).unwrap();
        assert_eq!(answer.len(), "2024-03-05 07:08:09".len(), "{answer:?}");
        assert_eq!(ask(&client, &server, b"%%|%Q|%"), b"%|%Q|%");
        assert_eq!(ask(&client, &server, b"\xff\xfe"), TimeError::NotUtf8.answer());
        assert_eq!(ask(&client, &server, b"a\0b"), TimeError::Nul.answer());
        let stats = server.stats();
        assert_eq!((stats.received, stats.answered, stats.bad_requests), (4, 2, 2));
        assert_eq!(ask(&client, &server, b"ok %%"), b"ok %");
    }

    #[test]
    fn a_burst_is_answered_or_counted_and_the_server_goes_on() {
        let server = start(Service::Echo);
        let client = peer();
        for i in 0..10_000u32 {
            client.send_to(&i.to_be_bytes(), server.local_addr()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        // Where the kernel's drops are unknown, the burst is over once nothing more arrives.
        let (mut last_received, mut quiet_since) = (0, Instant::now());
        loop {
            let stats = server.stats();
            let seen = stats.received + stats.kernel_drops.unwrap_or(0);
            let settled = stats.sent + stats.dropped(DropReason::SendError) == stats.received;
            if stats.received != last_received {
                (last_received, quiet_since) = (stats.received, Instant::now());
            }
            let quiet = stats.received > 0 && quiet_since.elapsed() > Duration::from_millis(200);
            if settled && (seen == 10_000 || stats.kernel_drops.is_none() && quiet) {
                break;
            }
            assert!(seen <= 10_000 && Instant::now() < deadline, "{stats:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Whatever the client's own buffer lost, a normal request is still answered.
        let mut buf = [0u8; 64];
        client.set_nonblocking(true).unwrap();
        while client.recv_from(&mut buf).is_ok() {}
        client.set_nonblocking(false).unwrap();
        assert_eq!(ask(&client, &server, b"still there"), b"STILL THERE");
    }

    #[test]
    fn requests_are_queued_as_events_when_asked() {
        let mut config = ServiceConfig::new("127.0.0.1", 0);
        config.events = Some(1);
        let server = ServiceServer::echo(config).unwrap();
        let client = peer();
        assert_eq!(ask(&client, &server, b"one"), b"ONE");
        assert_eq!(ask(&client, &server, b"two"), b"TWO");
        let events: Vec<Event> = server.event_queue().unwrap().take_queued();
        let from = client.local_addr().unwrap();
        assert_eq!(events, vec![Event::Message { data: b"one".to_vec(), from }]);
        assert_eq!(server.stats().dropped(DropReason::CallbackQueueFull), 1);
        assert!(start(Service::Time).event_queue().is_none());
    }

    #[test]
    fn rejects_bad_bufsize_and_busy_port() {
        let mut config = ServiceConfig::new("127.0.0.1", 0);
        config.bufsize = 0;
        assert!(matches!(ServiceServer::echo(config), Err(ChatError::InvalidArgument(_))));
        let first = start(Service::Echo);
        let busy = ServiceServer::time(ServiceConfig::new("127.0.0.1", first.local_addr().port()));
        assert!(matches!(busy, Err(ChatError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse));
    }

    #[test]
    fn validate_answers_only_validated_sources_and_never_more_than_3x() {
        let mut config = ServiceConfig::new("127.0.0.1", 0);
        config.validate = true;
        let server = ServiceServer::time(config).unwrap();
        let client = peer();
        // The tutorial's 6-byte request for a 2,047-byte answer gets a 12-byte challenge.
        let request = b"%2047Y";
        let challenge = ask(&client, &server, request);
        assert!(crate::auth::is_challenge(&challenge), "{challenge:?}");
        assert!(challenge.len() + 28 <= 3 * (request.len() + 28));
        client.send_to(&challenge, server.local_addr()).unwrap();
        assert_eq!(ask(&client, &server, request).len(), 2047);
        assert_eq!(ask(&client, &server, b"").len(), "2024-03-05 07:08:09".len());
        let stats = server.stats();
        assert_eq!((stats.answered, stats.dropped(DropReason::Auth)), (2, 1));
        // Another source is challenged again.
        assert!(crate::auth::is_challenge(&ask(&peer(), &server, b"")));
    }

    #[test]
    fn parses_proc_net_udp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            104: 0100007F:D03F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 15352 2 000000009ec61877 17\n";
        assert_eq!(parse_kernel_drops(table, 15352), Some(17));
        assert_eq!(parse_kernel_drops(table, 1), None);
    }
}
