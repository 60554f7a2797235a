//! Counters shared by the socket thread and readers of `stats`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use crate::auth::{RefusalCounters, Refused};
use crate::net::RecvBatch;

/// Why a datagram or an event was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// A source sent faster than its rate limit.
    Rate,
    /// A new source arrived while the clients table was full.
    TableFull,
    /// The source is not in the `allow` list.
    NotAllowed,
    /// The datagram failed authentication or address validation.
    Auth,
    /// The callback queue was full, or events were still queued at `stop()`.
    CallbackQueueFull,
    /// The kernel refused to send a datagram.
    SendError,
    /// A chat message from a source that had not answered its address-validation challenge
    /// could not be held for it (the hold queue was full, or it never answered in time).
    Unvalidated,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Rate,
        DropReason::TableFull,
        DropReason::NotAllowed,
        DropReason::Auth,
        DropReason::CallbackQueueFull,
        DropReason::SendError,
        DropReason::Unvalidated,
    ];

    /// The key used in the Python `stats["dropped"]` dict.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Rate => "rate",
            DropReason::TableFull => "table_full",
            DropReason::NotAllowed => "not_allowed",
            DropReason::Auth => "auth",
            DropReason::CallbackQueueFull => "callback_queue_full",
            DropReason::SendError => "send_error",
            DropReason::Unvalidated => "unvalidated",
        }
    }
}

/// Live counters, updated with relaxed atomics (they are statistics, not synchronisation).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub relayed: AtomicU64,
    pub sent: AtomicU64,
    pub truncated: AtomicU64,
    pub expired: AtomicU64,
    pub unreachable: AtomicU64,
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    pub heartbeats: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Why sealed datagrams were refused (all of them are in `dropped[Auth]` too).
    refused: RefusalCounters,
    send_errors: Mutex<BTreeMap<i32, u64>>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// What every receive loop counts of a batch it read: each datagram, and those cut to the
    /// buffer.
    pub fn count_reads(&self, batch: &RecvBatch) {
        Counters::add(&self.received, batch.len() as u64);
        let cut = batch.truncated();
        if cut > 0 {
            Counters::add(&self.truncated, cut as u64);
        }
    }

    pub fn drop_one(&self, reason: DropReason) {
        self.drop_many(reason, 1);
    }

    pub fn drop_many(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Relaxed);
    }

    /// Counts a datagram that failed authentication, under `auth` and under its reason.
    pub fn refuse(&self, why: Refused) {
        self.drop_one(DropReason::Auth);
        self.refused.count(why);
    }

    /// Counts a failed send under `send_error` and under its errno.
    pub fn send_failed(&self, errno: i32) {
        self.drop_one(DropReason::SendError);
        *self.send_errors.lock().entry(errno).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            received: self.received.load(Relaxed),
            relayed: self.relayed.load(Relaxed),
            sent: self.sent.load(Relaxed),
            truncated: self.truncated.load(Relaxed),
            expired: self.expired.load(Relaxed),
            unreachable: self.unreachable.load(Relaxed),
            joins: self.joins.load(Relaxed),
            leaves: self.leaves.load(Relaxed),
            heartbeats: self.heartbeats.load(Relaxed),
            dropped: DropReason::ALL.iter().map(|&r| (r, self.dropped[r as usize].load(Relaxed))).collect(),
            auth_refused: self.refused.snapshot(),
            send_errors: self.send_errors.lock().clone(),
        }
    }
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams read from the socket.
    pub received: u64,
    /// Chat messages answered with an Ack (server) or delivered (client).
    pub relayed: u64,
    /// Datagrams the kernel accepted for sending.
    pub sent: u64,
    /// Datagrams longer than `bufsize`, cut as the original cuts them.
    pub truncated: u64,
    /// Clients removed because they were silent for longer than `interval`.
    pub expired: u64,
    /// Clients removed because their port was unreachable.
    pub unreachable: u64,
    pub joins: u64,
    pub leaves: u64,
    pub heartbeats: u64,
    pub dropped: Vec<(DropReason, u64)>,
    /// Sealed datagrams refused, by reason (authenticated mode).
    pub auth_refused: Vec<(Refused, u64)>,
    /// Failed sends by errno.
    pub send_errors: BTreeMap<i32, u64>,
}

impl Stats {
    pub fn refused(&self, why: Refused) -> u64 {
        self.auth_refused.iter().find(|(r, _)| *r == why).map_or(0, |(_, n)| *n)
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}
