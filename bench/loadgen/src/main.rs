//! loadgen: load generator and ceiling measurements for the chatudp benchmarks.
//!
//! Loopback only: every target address must be a loopback address, every socket is bound to
//! 127.0.0.1, and every run is bounded by `--seconds` and exits by itself. One JSON line per run
//! goes to stdout (`minirelay` also prints a `listening` line first).
//!
//! Modes (see `loadgen help`):
//!   closed     N receivers + S senders with W messages in flight each; every Ack checked
//!   open       fixed offered rate R messages/s, loss reported
//!   ping       1 sender, 1 message in flight, round trip percentiles
//!   ceiling    bare sendmmsg loop to N loopback sockets drained by another thread
//!   minirelay  a minimal Rust relay (blocking recvmmsg + sendmmsg), the "ceiling relay"
//!   blast/sink numbered datagrams from S sources, and a bare recvmmsg receiver (collector bench)

mod blast;
mod json;
mod mmsg;
mod wire;

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use json::Json;
use mmsg::{RecvRing, SendBatch};

const HELP: &str = "\
loadgen MODE [--option value]...   (loopback targets only; every run ends by itself)

MODES
  closed     --server 127.0.0.1:PORT --seconds T --receivers N --senders S --window W --payload P
             [--dead D] [--interval I] [--warmup T0]
  open       --server ... --seconds T --rate R --receivers N --senders S --payload P [--dead D]
  ping       --server ... --seconds T [--payload P] [--warmup T0]
  ceiling    --seconds T --receivers N --payload P [--batch B]
  minirelay  [--port 0] [--seconds T] [--interval I]   prints {\"event\":\"listening\",\"port\":..}
             then relays until T passes or stdin reaches EOF
  blast      --server ... [--sources 4] [--count N] [--rate R] [--payload 16] [--seconds T]
             numbered datagrams (4-byte big-endian sequence per source) with sendmmsg
  sink       [--port 0] [--seconds T] [--quiet 0.5]   prints {\"event\":\"listening\",\"port\":..},
             counts what a blocking recvmmsg receives until --quiet seconds pass without any

COMMON
  --label TEXT       copied into the JSON line
  --ready            print {\"event\":\"ready\"} once registered, just before the measured run
  --rcvbuf BYTES     socket buffers of the load generator's sockets (default 4 MiB)
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    let result = match opts.mode.as_str() {
        "closed" => run_load(&opts, LoadKind::Closed),
        "open" => run_load(&opts, LoadKind::Open),
        "ping" => run_ping(&opts),
        "ceiling" => run_ceiling(&opts),
        "minirelay" => run_minirelay(&opts),
        "blast" => blast::run_blast(&opts),
        "sink" => blast::run_sink(&opts),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            return;
        }
        other => Err(format!("unknown mode {other:?}")),
    };
    match result {
        Ok(json) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{}", json.finish());
            let _ = out.flush();
        }
        Err(e) => {
            let mut j = Json::new();
            j.str("mode", &opts.mode);
            j.str("label", &opts.label);
            j.str("error", &e);
            println!("{}", j.finish());
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}

// ------------------------------------------------------------------------------------------
// options

struct Opts {
    mode: String,
    map: HashMap<String, String>,
    label: String,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut mode = None;
        let mut map = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if let Some(key) = a.strip_prefix("--") {
                if let Some((k, v)) = key.split_once('=') {
                    map.insert(k.to_owned(), v.to_owned());
                } else if key == "ready" || key == "help" {
                    map.insert(key.to_owned(), "1".to_owned());
                } else {
                    let v = args.get(i + 1).ok_or(format!("--{key} needs a value"))?;
                    map.insert(key.to_owned(), v.clone());
                    i += 1;
                }
            } else if mode.is_none() {
                mode = Some(a.clone());
            } else {
                return Err(format!("unexpected argument {a:?}"));
            }
            i += 1;
        }
        let mode = mode.or_else(|| map.get("mode").cloned()).unwrap_or_else(|| "help".into());
        let label = map.get("label").cloned().unwrap_or_default();
        Ok(Opts { mode, map, label })
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("bad value for --{key}: {v:?}")),
        }
    }

    fn flag(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn seconds(&self) -> Result<f64, String> {
        let s: f64 = self.get("seconds", 3.0)?;
        if !(s > 0.0 && s <= 600.0) {
            return Err("--seconds must be in (0, 600]".into());
        }
        Ok(s)
    }

    /// The server address; refuses anything that is not loopback.
    fn server(&self) -> Result<SocketAddr, String> {
        let s = self.map.get("server").ok_or("--server 127.0.0.1:PORT is required")?;
        let addr: SocketAddr = s.parse().map_err(|_| format!("bad --server {s:?}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("refusing non-loopback target {addr}: loadgen is for 127.0.0.1 only"));
        }
        if !addr.is_ipv4() {
            return Err("only IPv4 loopback targets are supported".into());
        }
        Ok(addr)
    }
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn bound_socket(bufsize: usize) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    set_buffers(&s, bufsize);
    Ok(s)
}

fn set_buffers(s: &UdpSocket, bytes: usize) {
    let v = bytes as libc::c_int;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: valid fd and a c_int option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime fills the struct.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }
}

/// Aggregate jiffies from /proc/stat: (user+nice, system, softirq+irq, idle+iowait, steal).
#[derive(Clone, Copy, Default)]
struct CpuStat {
    user: u64,
    system: u64,
    irq: u64,
    idle: u64,
    steal: u64,
}

fn cpu_stat() -> CpuStat {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    CpuStat { user: g(0) + g(1), system: g(2), idle: g(3) + g(4), irq: g(5) + g(6), steal: g(7) }
}

/// Machine-wide CPU use between `before` and now, in percent of all CPUs.
fn cpu_stat_delta(j: &mut Json, before: CpuStat, a: CpuStat) {
    let d = |x: u64, y: u64| x.saturating_sub(y) as f64;
    let parts = [
        ("user", d(a.user, before.user)),
        ("system", d(a.system, before.system)),
        ("softirq", d(a.irq, before.irq)),
        ("idle", d(a.idle, before.idle)),
        ("steal", d(a.steal, before.steal)),
    ];
    let total: f64 = parts.iter().map(|p| p.1).sum();
    for (name, v) in parts {
        j.num(&format!("machine_{name}_pct"), if total > 0.0 { 100.0 * v / total } else { 0.0 });
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 * 1e-6
}

/// System-wide UDP counters from /proc/net/snmp (name -> value).
fn udp_snmp() -> HashMap<String, i64> {
    let mut out = HashMap::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/snmp") {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
        if lines.len() >= 2 {
            for (k, v) in lines[0].split_whitespace().zip(lines[1].split_whitespace()).skip(1) {
                if let Ok(v) = v.parse() {
                    out.insert(k.to_owned(), v);
                }
            }
        }
    }
    out
}

fn snmp_delta(j: &mut Json, before: &HashMap<String, i64>) {
    let after = udp_snmp();
    for key in ["RcvbufErrors", "SndbufErrors", "NoPorts", "InErrors"] {
        let d = after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0);
        j.int(&format!("snmp_{key}"), d);
    }
}

fn print_event(name: &str, extra: Option<(&str, i64)>) {
    let mut j = Json::new();
    j.str("event", name);
    if let Some((k, v)) = extra {
        j.int(k, v);
    }
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", j.finish());
    let _ = out.flush();
}

// ------------------------------------------------------------------------------------------
// closed and open loop

#[derive(Clone, Copy, PartialEq, Eq)]
enum LoadKind {
    Closed,
    Open,
}

struct Peer {
    sock: UdpSocket,
    /// Index into the senders table, for sender sockets.
    sender: Option<usize>,
    /// Valid Acks received by this socket.
    acks: u64,
}

struct Sender {
    peer: usize,
    payload: Vec<u8>,
    expected: Vec<u8>,
    inflight: u64,
    sent: u64,
    acked: u64,
    acked_seen: u64,
    last_progress: Instant,
}

#[derive(Default, Clone, Copy)]
struct Totals {
    deliveries: u64,
    sender_deliveries: u64,
    messages_acked: u64,
    messages_sent: u64,
    bad: u64,
    byes: u64,
    datagrams_in: u64,
}

struct Load {
    peers: Vec<Peer>,
    senders: Vec<Sender>,
    /// Ack text -> sender, keyed by the port the Ack names.
    by_port: HashMap<u16, usize>,
    ring: RecvRing,
    batch: SendBatch,
    epfd: libc::c_int,
    t: Totals,
    bad_example: Option<Vec<u8>>,
    stalls: u64,
}

impl Load {
    fn drain_socket(&mut self, index: usize) {
        let fd = self.peers[index].sock.as_raw_fd();
        loop {
            let n = self.ring.recv(fd);
            if n == 0 {
                return;
            }
            self.t.datagrams_in += n as u64;
            for i in 0..n {
                let d = self.ring.get(i);
                match wire::ack_port(d).and_then(|p| self.by_port.get(&p).copied()) {
                    Some(s) if self.senders[s].expected == d => {
                        self.peers[index].acks += 1;
                        self.t.deliveries += 1;
                        if self.peers[index].sender.is_some() {
                            self.t.sender_deliveries += 1;
                        }
                        if self.peers[index].sender == Some(s) {
                            let sender = &mut self.senders[s];
                            sender.acked += 1;
                            sender.inflight = sender.inflight.saturating_sub(1);
                            self.t.messages_acked += 1;
                        }
                    }
                    _ if d == b"Bye!" => self.t.byes += 1,
                    _ => {
                        self.t.bad += 1;
                        if self.bad_example.is_none() {
                            self.bad_example = Some(d.to_vec());
                        }
                    }
                }
            }
            if n < self.ring.slots() {
                return;
            }
        }
    }

    /// Waits up to `timeout_ms` and drains whatever became readable.
    fn poll(&mut self, timeout_ms: i32) -> usize {
        let mut events: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
        // SAFETY: valid epoll fd and event buffer.
        let n = unsafe { libc::epoll_wait(self.epfd, events.as_mut_ptr(), 64, timeout_ms) };
        if n <= 0 {
            return 0;
        }
        for ev in &events[..n as usize] {
            let index = ev.u64 as usize;
            self.drain_socket(index);
        }
        n as usize
    }

    fn send(&mut self, s: usize, count: u64) -> u64 {
        if count == 0 {
            return 0;
        }
        let fd = self.peers[self.senders[s].peer].sock.as_raw_fd();
        let sent = self.batch.send_connected(fd, &self.senders[s].payload, count as usize) as u64;
        let sender = &mut self.senders[s];
        sender.sent += sent;
        sender.inflight += sent;
        self.t.messages_sent += sent;
        sent
    }

    fn heartbeat_all(&mut self) {
        for p in &self.peers {
            let _ = p.sock.send(b"^hb^");
        }
    }

    fn remove_from_epoll(&mut self, index: usize) {
        // SAFETY: valid fds.
        unsafe {
            libc::epoll_ctl(
                self.epfd,
                libc::EPOLL_CTL_DEL,
                self.peers[index].sock.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Drains until nothing has arrived for `quiet`, at most `max`.
    fn settle(&mut self, quiet: Duration, max: Duration) {
        let start = Instant::now();
        let mut last = Instant::now();
        while start.elapsed() < max {
            let before = self.t.datagrams_in;
            self.poll(5);
            if self.t.datagrams_in != before {
                last = Instant::now();
            } else if last.elapsed() >= quiet {
                break;
            }
        }
    }
}

fn run_load(opts: &Opts, kind: LoadKind) -> Result<Json, String> {
    let server = opts.server()?;
    let seconds = opts.seconds()?;
    let warmup: f64 = opts.get("warmup", 0.5)?;
    let receivers: usize = opts.get("receivers", 1)?;
    let nsenders: usize = opts.get("senders", if kind == LoadKind::Closed { 2 } else { 1 })?;
    let window: u64 = opts.get("window", 16)?;
    let payload_len: usize = opts.get("payload", 32)?;
    let dead: usize = opts.get("dead", 0)?;
    let interval: f64 = opts.get("interval", 10.0)?;
    let rate: f64 = opts.get("rate", 1000.0)?;
    let bufbytes: usize = opts.get("rcvbuf", 4 << 20)?;
    if nsenders == 0 || nsenders > 64 || receivers > 4096 || dead > 4096 || window == 0 {
        return Err("need 1..64 senders, <= 4096 receivers and dead, window >= 1".into());
    }
    if kind == LoadKind::Open && !(rate > 0.0 && rate <= 5e6) {
        return Err("--rate must be in (0, 5e6]".into());
    }
    let snmp_before = udp_snmp();
    // SAFETY: plain syscall.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
    }
    let mut peers = Vec::new();
    let mut senders = Vec::new();
    let mut by_port = HashMap::new();
    // Live sockets first, dead ones last, so the ports of the dead ones are never reused by a
    // live socket of this run.
    for i in 0..(nsenders + receivers + dead) {
        let sock = bound_socket(bufbytes)?;
        sock.connect(server).map_err(|e| format!("connect: {e}"))?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = sock.local_addr().map_err(|e| e.to_string())?.port();
        let sender = if i < nsenders {
            let payload = wire::letters(payload_len, i);
            let expected = wire::ack(&payload, &SocketAddr::new(LOCALHOST, port));
            by_port.insert(port, senders.len());
            senders.push(Sender {
                peer: i,
                payload,
                expected,
                inflight: 0,
                sent: 0,
                acked: 0,
                acked_seen: 0,
                last_progress: Instant::now(),
            });
            Some(senders.len() - 1)
        } else {
            None
        };
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        // SAFETY: valid fds and event.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &mut ev) };
        peers.push(Peer { sock, sender, acks: 0 });
    }
    let ack_len = senders[0].expected.len();
    let mut load = Load {
        peers,
        senders,
        by_port,
        ring: RecvRing::new(64, 65536.min(ack_len * 2 + 64)),
        batch: SendBatch::new(64),
        epfd,
        t: Totals::default(),
        bad_example: None,
        stalls: 0,
    };
    let live = nsenders + receivers;

    // --- registration: every socket heartbeats, then sender 0 sends until every socket (the
    // dead-to-be included) has seen one of its Acks.
    let sync_start = Instant::now();
    let mut last_probe = Instant::now() - Duration::from_secs(1);
    loop {
        if load.peers.iter().all(|p| p.acks > 0) {
            break;
        }
        if sync_start.elapsed() > Duration::from_secs(8) {
            let missing = load.peers.iter().filter(|p| p.acks == 0).count();
            return Err(format!("registration failed: {missing} sockets never got an Ack"));
        }
        if last_probe.elapsed() > Duration::from_millis(100) {
            load.heartbeat_all();
            std::thread::sleep(Duration::from_millis(2));
            load.send(0, 1);
            last_probe = Instant::now();
        }
        load.poll(5);
    }
    let sync_seconds = sync_start.elapsed().as_secs_f64();
    load.settle(Duration::from_millis(30), Duration::from_secs(2));
    // Dead clients: registered above; closing them now leaves their ports unreachable.
    for i in live..load.peers.len() {
        load.remove_from_epoll(i);
    }
    load.peers.truncate(live);
    // Reset every counter: the measured run starts from here.
    load.t = Totals::default();
    load.bad_example = None;
    for p in &mut load.peers {
        p.acks = 0;
    }
    for s in &mut load.senders {
        s.inflight = 0;
        s.sent = 0;
        s.acked = 0;
        s.acked_seen = 0;
        s.last_progress = Instant::now();
    }
    if opts.flag("ready") {
        print_event("ready", None);
    }

    // --- the run: warm-up, then the measured window.
    let start = Instant::now();
    let t_warm = start + Duration::from_secs_f64(warmup);
    let t_end = t_warm + Duration::from_secs_f64(seconds);
    let hb_every = Duration::from_secs_f64((interval / 2.0).max(0.05));
    let mut next_hb = start + hb_every;
    let mut at_warm: Option<(Totals, f64, Instant)> = None;
    let mut machine_warm = CpuStat::default();
    let mut offered_start_sent = 0u64;
    let stall_after = Duration::from_millis(200);
    let mut rr = 0usize;
    loop {
        let now = Instant::now();
        if at_warm.is_none() && now >= t_warm {
            at_warm = Some((load.t, cpu_seconds(), now));
            machine_warm = cpu_stat();
            offered_start_sent = load.t.messages_sent;
        }
        if now >= t_end {
            break;
        }
        if now >= next_hb {
            load.heartbeat_all();
            next_hb += hb_every;
        }
        match kind {
            LoadKind::Closed => {
                for s in 0..load.senders.len() {
                    let sender = &mut load.senders[s];
                    if sender.acked != sender.acked_seen || sender.inflight == 0 {
                        sender.acked_seen = sender.acked;
                        sender.last_progress = now;
                    } else if now - sender.last_progress > stall_after {
                        // Lost somewhere: forget what is in flight and refill.
                        sender.inflight = 0;
                        sender.last_progress = now;
                        load.stalls += 1;
                    }
                    let missing = window.saturating_sub(sender.inflight);
                    load.send(s, missing);
                }
                load.poll(1);
            }
            LoadKind::Open => {
                let due = ((now - start).as_secs_f64() * rate) as u64;
                let mut owed = due.saturating_sub(load.t.messages_sent);
                // Paced in small batches: at most 64 per sender per pass.
                while owed > 0 {
                    let s = rr % load.senders.len();
                    rr += 1;
                    let chunk = owed.min(64);
                    let n = load.send(s, chunk);
                    owed -= n.min(owed);
                    if n < chunk {
                        break;
                    }
                }
                load.poll(1);
            }
        }
    }
    let end_instant = Instant::now();
    let at_end = (load.t, cpu_seconds());
    let machine_end = cpu_stat();
    let (w_t, w_cpu, w_time) = at_warm.unwrap_or((Totals::default(), 0.0, start));
    let window_s = (end_instant - w_time).as_secs_f64();
    // Collect what is still in flight, for the loss figures.
    load.settle(Duration::from_millis(300), Duration::from_secs(3));
    for p in &load.peers {
        let _ = p.sock.send(b"quit");
    }
    let fin = load.t;

    let dt = |a: u64, b: u64| a.saturating_sub(b);
    let deliveries = dt(at_end.0.deliveries, w_t.deliveries);
    let messages = dt(at_end.0.messages_acked, w_t.messages_acked);
    let sent_window = dt(at_end.0.messages_sent, w_t.messages_sent);
    let cpu = at_end.1 - w_cpu;
    let handled = sent_window + dt(at_end.0.datagrams_in, w_t.datagrams_in);
    let fanout = live as u64;
    let expected_deliveries = fin.messages_sent * fanout;

    let mut j = Json::new();
    j.str("mode", if kind == LoadKind::Closed { "closed" } else { "open" });
    j.str("label", &opts.label);
    j.str("server", &server.to_string());
    j.int("receivers", receivers as i64);
    j.int("senders", nsenders as i64);
    j.int("dead", dead as i64);
    j.int("fanout", fanout as i64);
    j.int("payload", payload_len as i64);
    j.int("ack_len", ack_len as i64);
    if kind == LoadKind::Closed {
        j.int("window", window as i64);
    } else {
        j.num("offered_rate", rate);
        let sent_in_window = dt(at_end.0.messages_sent, offered_start_sent);
        j.num("achieved_send_rate", sent_in_window as f64 / window_s);
    }
    j.num("seconds", window_s);
    j.num("sync_seconds", sync_seconds);
    j.int("deliveries", deliveries as i64);
    j.num("deliveries_per_s", deliveries as f64 / window_s);
    j.int("messages", messages as i64);
    j.num("messages_per_s", messages as f64 / window_s);
    j.int("bad_acks", fin.bad as i64);
    if let Some(b) = &load.bad_example {
        j.str("bad_example", &String::from_utf8_lossy(b));
    }
    j.int("byes", fin.byes as i64);
    j.int("total_sent", fin.messages_sent as i64);
    j.int("total_acked", fin.messages_acked as i64);
    j.int("total_deliveries", fin.deliveries as i64);
    j.int("lost_messages", fin.messages_sent.saturating_sub(fin.messages_acked) as i64);
    j.num(
        "loss_pct",
        if fin.messages_sent > 0 {
            100.0 * fin.messages_sent.saturating_sub(fin.messages_acked) as f64 / fin.messages_sent as f64
        } else {
            0.0
        },
    );
    j.num(
        "delivery_loss_pct",
        if expected_deliveries > 0 {
            100.0 * expected_deliveries.saturating_sub(fin.deliveries) as f64 / expected_deliveries as f64
        } else {
            0.0
        },
    );
    j.int("stalls", load.stalls as i64);
    // Is the load generator the bottleneck? Its own CPU use over the measured window.
    j.num("loadgen_cpu_s", cpu);
    j.num("loadgen_cpu_pct", 100.0 * cpu / window_s);
    j.num("loadgen_ns_per_datagram", if handled > 0 { cpu * 1e9 / handled as f64 } else { 0.0 });
    cpu_stat_delta(&mut j, machine_warm, machine_end);
    snmp_delta(&mut j, &snmp_before);
    // SAFETY: closing our own epoll fd.
    unsafe { libc::close(epfd) };
    Ok(j)
}

// ------------------------------------------------------------------------------------------
// ping

fn run_ping(opts: &Opts) -> Result<Json, String> {
    let server = opts.server()?;
    let seconds = opts.seconds()?;
    let warmup: f64 = opts.get("warmup", 0.3)?;
    let payload_len: usize = opts.get("payload", 32)?;
    let sock = bound_socket(1 << 20)?;
    sock.connect(server).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let port = sock.local_addr().map_err(|e| e.to_string())?.port();
    let payload = wire::letters(payload_len, 0);
    let expected = wire::ack(&payload, &SocketAddr::new(LOCALHOST, port));
    let mut buf = vec![0u8; 65536];
    let mut bad = 0u64;
    let mut timeouts = 0u64;
    // Register and check the server answers at all.
    let sync_start = Instant::now();
    loop {
        let _ = sock.send(&payload);
        if let Ok(n) = sock.recv(&mut buf) {
            if buf[..n] == expected[..] {
                break;
            }
        }
        if sync_start.elapsed() > Duration::from_secs(8) {
            return Err("server never answered".into());
        }
    }
    if opts.flag("ready") {
        print_event("ready", None);
    }
    let start = Instant::now();
    let t_warm = start + Duration::from_secs_f64(warmup);
    let t_end = t_warm + Duration::from_secs_f64(seconds);
    let mut rtts: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut cpu_warm = None;
    let mut machine_warm = CpuStat::default();
    while Instant::now() < t_end {
        let t0 = Instant::now();
        if sock.send(&payload).is_err() {
            timeouts += 1;
            continue;
        }
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n] == expected[..] => {
                    let rtt = t0.elapsed().as_nanos() as u64;
                    if t0 >= t_warm {
                        if cpu_warm.is_none() {
                            cpu_warm = Some(cpu_seconds());
                            machine_warm = cpu_stat();
                        }
                        rtts.push(rtt);
                    }
                    break;
                }
                Ok(_) => bad += 1,
                Err(_) => {
                    timeouts += 1;
                    break;
                }
            }
        }
    }
    let measured = (Instant::now() - t_warm).as_secs_f64();
    let cpu = cpu_seconds() - cpu_warm.unwrap_or(0.0);
    let machine_end = cpu_stat();
    let _ = sock.send(b"quit");
    rtts.sort_unstable();
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        let idx = ((rtts.len() as f64 - 1.0) * p).round() as usize;
        rtts[idx] as f64 / 1000.0
    };
    let mean = if rtts.is_empty() { 0.0 } else { rtts.iter().sum::<u64>() as f64 / rtts.len() as f64 / 1000.0 };
    let mut j = Json::new();
    j.str("mode", "ping");
    j.str("label", &opts.label);
    j.str("server", &server.to_string());
    j.int("payload", payload_len as i64);
    j.num("seconds", measured);
    j.int("round_trips", rtts.len() as i64);
    j.num("round_trips_per_s", rtts.len() as f64 / measured);
    j.num("p50_us", pct(0.50));
    j.num("p90_us", pct(0.90));
    j.num("p99_us", pct(0.99));
    j.num("mean_us", mean);
    j.num("max_us", rtts.last().map_or(0.0, |&v| v as f64 / 1000.0));
    j.int("bad_acks", bad as i64);
    j.int("timeouts", timeouts as i64);
    j.num("loadgen_cpu_pct", 100.0 * cpu / measured);
    cpu_stat_delta(&mut j, machine_warm, machine_end);
    Ok(j)
}

// ------------------------------------------------------------------------------------------
// ceiling: a bare sendmmsg loop

fn run_ceiling(opts: &Opts) -> Result<Json, String> {
    let seconds = opts.seconds()?;
    let receivers: usize = opts.get("receivers", 16)?;
    let size: usize = opts.get("payload", 32)?;
    let batch: usize = opts.get("batch", receivers)?;
    let warmup: f64 = opts.get("warmup", 0.3)?;
    let spin = match opts.map.get("drain").map(String::as_str) {
        None | Some("epoll") => false,
        Some("spin") => true,
        Some(other) => return Err(format!("--drain must be epoll or spin, not {other}")),
    };
    if receivers == 0 || receivers > 4096 || batch == 0 || batch > 1024 || size > 65507 {
        return Err("need 1..4096 receivers, batch 1..1024, payload <= 65507".into());
    }
    let snmp_before = udp_snmp();
    let mut socks = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..receivers {
        let s = bound_socket(4 << 20)?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        addrs.push(s.local_addr().map_err(|e| e.to_string())?);
        socks.push(s);
    }
    let sender = bound_socket(4 << 20)?;
    let payload = vec![b'x'; size];
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    // Drain thread: epoll over the receivers, recvmmsg each ready one.
    let drain = {
        let stop = Arc::clone(&stop);
        let received = Arc::clone(&received);
        let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
        std::thread::Builder::new()
            .name("ceiling-drain".into())
            .spawn(move || -> f64 {
                // SAFETY: plain syscalls on fds kept open by the main thread until join.
                let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                for (i, &fd) in fds.iter().enumerate() {
                    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
                    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
                }
                let mut ring = RecvRing::new(64, size.max(1));
                let mut events: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
                let mut quiet_since: Option<Instant> = None;
                loop {
                    if spin {
                        // Busy-poll every receiver: the sender never has to wake anybody.
                        let mut got_any = 0;
                        for &fd in &fds {
                            loop {
                                let got = ring.recv(fd);
                                got_any += got;
                                received.fetch_add(got as u64, Ordering::Relaxed);
                                if got < ring.slots() {
                                    break;
                                }
                            }
                        }
                        if got_any == 0 && stop.load(Ordering::Relaxed) {
                            let q = *quiet_since.get_or_insert_with(Instant::now);
                            if q.elapsed() > Duration::from_millis(100) {
                                break;
                            }
                        } else if got_any > 0 {
                            quiet_since = None;
                        }
                        continue;
                    }
                    let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 64, 5) };
                    if n > 0 {
                        quiet_since = None;
                        for ev in &events[..n as usize] {
                            let fd = fds[ev.u64 as usize];
                            loop {
                                let got = ring.recv(fd);
                                received.fetch_add(got as u64, Ordering::Relaxed);
                                if got < ring.slots() {
                                    break;
                                }
                            }
                        }
                    } else if stop.load(Ordering::Relaxed) {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_millis(100) {
                            break;
                        }
                    }
                }
                unsafe { libc::close(epfd) };
                thread_cpu_seconds()
            })
            .map_err(|e| e.to_string())?
    };
    // Sender: this thread, blocking sendmmsg of `batch` datagrams, round robin over receivers.
    let mut sb = SendBatch::new(batch);
    let start = Instant::now();
    let t_warm = start + Duration::from_secs_f64(warmup);
    let t_end = t_warm + Duration::from_secs_f64(seconds);
    let mut sent: u64 = 0;
    let mut next = 0usize;
    let mut warm: Option<(u64, u64, f64, Instant)> = None;
    let mut machine_warm = CpuStat::default();
    let mut to: Vec<SocketAddr> = Vec::with_capacity(batch);
    let mut errors = 0u64;
    loop {
        let now = Instant::now();
        if warm.is_none() && now >= t_warm {
            warm = Some((sent, received.load(Ordering::Relaxed), thread_cpu_seconds(), now));
            machine_warm = cpu_stat();
        }
        if now >= t_end {
            break;
        }
        // 64 calls between clock reads.
        for _ in 0..64 {
            to.clear();
            for _ in 0..batch {
                to.push(addrs[next]);
                next = (next + 1) % receivers;
            }
            match sb.send_to(sender.as_raw_fd(), &payload, &to) {
                Ok(n) => sent += n as u64,
                Err(_) => errors += 1,
            }
        }
    }
    let end = Instant::now();
    let recv_end = received.load(Ordering::Relaxed);
    let sender_cpu = thread_cpu_seconds();
    let machine_end = cpu_stat();
    stop.store(true, Ordering::Relaxed);
    let drain_cpu = drain.join().unwrap_or(0.0);
    let recv_total = received.load(Ordering::Relaxed);
    let (w_sent, w_recv, w_cpu, w_time) = warm.unwrap_or((0, 0, 0.0, start));
    let secs = (end - w_time).as_secs_f64();
    let sent_w = sent - w_sent;
    let mut j = Json::new();
    j.str("mode", "ceiling");
    j.str("label", &opts.label);
    j.int("receivers", receivers as i64);
    j.int("payload", size as i64);
    j.int("batch", batch as i64);
    j.num("seconds", secs);
    j.num("sent_per_s", sent_w as f64 / secs);
    j.num("deliveries_per_s", (recv_end - w_recv) as f64 / secs);
    j.int("total_sent", sent as i64);
    j.int("total_received", recv_total as i64);
    j.int("dropped", sent.saturating_sub(recv_total) as i64);
    j.int("send_errors", errors as i64);
    // The sender thread's CPU per datagram: the kernel's send path (loopback delivery included).
    j.num("sender_ns_per_datagram", (sender_cpu - w_cpu) * 1e9 / sent_w.max(1) as f64);
    j.num("sender_cpu_pct", 100.0 * (sender_cpu - w_cpu) / secs);
    j.num("drain_cpu_s", drain_cpu);
    j.str("drain", if spin { "spin" } else { "epoll" });
    cpu_stat_delta(&mut j, machine_warm, machine_end);
    snmp_delta(&mut j, &snmp_before);
    Ok(j)
}

// ------------------------------------------------------------------------------------------
// minirelay: the "ceiling relay", a minimal relay in Rust

fn run_minirelay(opts: &Opts) -> Result<Json, String> {
    let seconds: f64 = opts.get("seconds", 60.0)?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".into());
    }
    let port: u16 = opts.get("port", 0)?;
    let interval: f64 = opts.get("interval", 10.0)?;
    let sock = UdpSocket::bind(SocketAddr::new(LOCALHOST, port)).map_err(|e| format!("bind: {e}"))?;
    set_buffers(&sock, 4 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    print_event("listening", Some(("port", i64::from(local.port()))));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // Ends the relay when our parent closes our stdin (or dies).
        std::thread::spawn(move || {
            let stdin = io::stdin();
            let mut line = String::new();
            while stdin.lock().read_line(&mut line).map_or(false, |n| n > 0) {
                line.clear();
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let fd = sock.as_raw_fd();
    let mut ring = RecvRing::with_names(32, 1024);
    let mut sb = SendBatch::new(64);
    let mut clients: Vec<(SocketAddr, f64)> = Vec::new();
    let mut index: HashMap<SocketAddr, usize> = HashMap::new();
    let mut live: Vec<SocketAddr> = Vec::new();
    let mut ack = Vec::with_capacity(4096);
    let (mut received, mut relayed, mut sent) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = ring.recv_blocking(fd);
        if n == 0 {
            continue;
        }
        received += n as u64;
        let now = t0.elapsed().as_secs_f64();
        for i in 0..n {
            let (data, from) = ring.get_from(i);
            let stripped = wire::strip(data);
            if stripped == b"quit" {
                if let Some(k) = index.remove(&from) {
                    clients.swap_remove(k);
                    if k < clients.len() {
                        index.insert(clients[k].0, k);
                    }
                }
                continue;
            }
            match index.get(&from) {
                Some(&k) => clients[k].1 = now,
                None => {
                    index.insert(from, clients.len());
                    clients.push((from, now));
                }
            }
            if stripped == b"^hb^" {
                continue;
            }
            ack.clear();
            wire::write_ack(data, &from, &mut ack);
            live.clear();
            live.extend(clients.iter().filter(|c| now - c.1 <= interval).map(|c| c.0));
            let mut done = 0;
            while done < live.len() {
                let end = (done + 64).min(live.len());
                match sb.send_to(fd, &ack, &live[done..end]) {
                    Ok(k) if k > 0 => done += k,
                    _ => done += 1,
                }
            }
            sent += live.len() as u64;
            relayed += 1;
        }
    }
    let mut j = Json::new();
    j.str("mode", "minirelay");
    j.str("label", &opts.label);
    j.int("received", received as i64);
    j.int("relayed", relayed as i64);
    j.int("sent", sent as i64);
    j.num("cpu_s", cpu_seconds());
    Ok(j)
}
