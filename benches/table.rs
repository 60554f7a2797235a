//! How the one clients table shared by `workers=N` socket threads scales: N threads hammer a
//! `Mutex<Relay>` with the relay loop's own operations (a refresh per heartbeat, a refresh plus
//! the live list per chat message) and the lookups+refreshes per second are printed per thread
//! count, locked per datagram and per receive batch (as the relay loop locks it).
//!
//! `cargo bench --bench table` (plain timed loop; `TABLE_BENCH_MS` sets the time per run).

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use _core::relay::Relay;
use parking_lot::Mutex;

const CLIENTS: u16 = 64;
const BATCH: usize = 32;
const RUNS: usize = 5;

#[derive(Clone, Copy)]
enum Work {
    Heartbeat,
    Chat,
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + i))
}

/// Operations per second of `threads` threads, each locking once per `per_lock` datagrams.
fn run(threads: usize, per_lock: usize, work: Work, length: Duration) -> f64 {
    let table = Arc::new(Mutex::new(Relay::with_limits(3600.0, 1 << 20, None)));
    for i in 0..CLIENTS {
        table.lock().refresh(addr(i), 0.0, &mut Vec::new());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (table, stop, done) = (table.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut live, mut gone) = (Vec::with_capacity(CLIENTS as usize), Vec::new());
                let payload: &[u8] = match work {
                    Work::Heartbeat => b"^hb^",
                    Work::Chat => b"hello",
                };
                let mut n: u64 = 0;
                let mut next = t as u16;
                while !stop.load(Ordering::Relaxed) {
                    let mut relay = table.lock();
                    for _ in 0..per_lock {
                        next = (next + 1) % CLIENTS;
                        relay.on_datagram(payload, addr(next), 1.0, &mut live, &mut gone);
                        std::hint::black_box(&live);
                    }
                    drop(relay);
                    n += per_lock as u64;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / length.as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let ms = std::env::var("TABLE_BENCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let length = Duration::from_millis(ms);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("shared clients table, {CLIENTS} clients, {RUNS} runs of {ms} ms, {cores} cores");
    println!("| work | lock held for | threads | Mops/s median | range | ratio to 1 thread |");
    println!("|---|---|---|---|---|---|");
    let started = Instant::now();
    for (work, name) in [(Work::Heartbeat, "heartbeat (refresh)"), (Work::Chat, "chat (refresh + live list)")] {
        for (per_lock, lock_name) in [(1, "1 datagram"), (BATCH, "a batch of 32")] {
            let mut base = None;
            for threads in [1, 2, 4, 8] {
                let mut rates: Vec<f64> = (0..RUNS).map(|_| run(threads, per_lock, work, length)).collect();
                let mid = median(&mut rates);
                let base = *base.get_or_insert(mid);
                println!(
                    "| {name} | {lock_name} | {threads} | {:.2} | {:.2}-{:.2} | {:.2}x |",
                    mid / 1e6,
                    rates[0] / 1e6,
                    rates[RUNS - 1] / 1e6,
                    mid / base
                );
            }
        }
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
