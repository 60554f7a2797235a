//! The server's clients table and its rules, without sockets or clocks.
//!
//! Times are wall-clock seconds (`time.time()` in the original), passed in by the caller so that
//! tests need no sleeps.

use std::net::SocketAddr;

use indexmap::IndexMap;

use crate::config::DEFAULT_MAX_CLIENTS;
use crate::limits::{Rate, RateLimiter};
use crate::protocol::{classify, Kind};

/// What one datagram did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A heartbeat; `joined` when the source was not in the table.
    Heartbeat { joined: bool },
    /// A `quit`; `left` when the source was in the table.
    Quit { left: bool },
    /// A chat message to Ack; `joined` when the source was not in the table.
    Chat { joined: bool },
    /// A chat message over the source's rate: dropped, though the source counts as alive.
    RateLimited { joined: bool },
    /// A new source while the table is full: not added, nothing sent.
    TableFull,
}

impl Outcome {
    /// True when the datagram added its source to the table.
    pub fn joined(self) -> bool {
        match self {
            Outcome::Heartbeat { joined } | Outcome::Chat { joined } | Outcome::RateLimited { joined } => joined,
            Outcome::Quit { .. } | Outcome::TableFull => false,
        }
    }
}

/// What [`Relay::refresh`] did with a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It was new and is now in the table.
    Joined,
    /// It was in the table already; its time was refreshed.
    Known,
    /// It was new and the table is full of live clients: not added.
    TableFull,
}

/// What the table keeps per client.
#[derive(Debug, Clone, Copy)]
struct Entry {
    last_seen: f64,
}

/// The `clients` dict of the original server: address -> last time heard from, bounded by
/// `max_clients`, with an optional per-source rate limit on chat messages.
#[derive(Debug)]
pub struct Relay {
    clients: IndexMap<SocketAddr, Entry>,
    interval: f64,
    max_clients: usize,
    /// Kept apart from `clients`: leaving and joining again never refills a bucket.
    limiter: Option<RateLimiter>,
}

impl Relay {
    pub fn new(interval: f64) -> Relay {
        Relay::with_limits(interval, DEFAULT_MAX_CLIENTS, None)
    }

    pub fn with_limits(interval: f64, max_clients: usize, rate: Option<Rate>) -> Relay {
        let limiter = rate.map(|rate| RateLimiter::new(rate, max_clients.max(1024)));
        Relay { clients: IndexMap::new(), interval, max_clients: max_clients.max(1), limiter }
    }

    pub fn interval(&self) -> f64 {
        self.interval
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.clients.contains_key(addr)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SocketAddr, f64)> {
        self.clients.iter().map(|(addr, entry)| (addr, entry.last_seen))
    }

    pub fn addresses(&self) -> impl Iterator<Item = &SocketAddr> {
        self.clients.keys()
    }

    /// When `addr` was last heard from, if it is in the table.
    pub fn last_seen(&self, addr: &SocketAddr) -> Option<f64> {
        self.clients.get(addr).map(|entry| entry.last_seen)
    }

    /// Fills `live` with the clients heard from within `interval` at `now`: those a chat message
    /// would be Acked to. Nobody is removed.
    pub fn live(&self, now: f64, live: &mut Vec<SocketAddr>) {
        live.clear();
        live.extend(self.iter().filter(|(_, seen)| now - seen <= self.interval).map(|(addr, _)| *addr));
    }

    /// Applies one datagram as the original receive loop does. For a chat message, `recipients`
    /// receives every client heard from within `interval` (the sender included). `expired`
    /// receives every client found silent for longer, which is removed.
    pub fn on_datagram(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        now: f64,
        recipients: &mut Vec<SocketAddr>,
        expired: &mut Vec<SocketAddr>,
    ) -> Outcome {
        match classify(data) {
            Kind::Heartbeat => match self.admit(from, now, expired) {
                Some(joined) => Outcome::Heartbeat { joined },
                None => Outcome::TableFull,
            },
            Kind::Quit => Outcome::Quit { left: self.remove(&from) },
            Kind::Chat => {
                let Some(joined) = self.admit(from, now, expired) else {
                    return Outcome::TableFull;
                };
                if let Some(limiter) = &mut self.limiter {
                    if !limiter.take(from, now) {
                        return Outcome::RateLimited { joined };
                    }
                }
                self.split_live(now, self.interval, recipients, expired);
                Outcome::Chat { joined }
            }
        }
    }

    /// Records `addr` as heard from at `now`, as a heartbeat would, without classifying any
    /// payload (a validated cookie echo): `Admission::Joined` when new to the table,
    /// `Admission::TableFull` when there is no room. Clients removed to make room go to
    /// `expired`, so the caller can tell them they left.
    pub fn refresh(&mut self, addr: SocketAddr, now: f64, expired: &mut Vec<SocketAddr>) -> Admission {
        match self.admit(addr, now, expired) {
            Some(true) => Admission::Joined,
            Some(false) => Admission::Known,
            None => Admission::TableFull,
        }
    }

    /// Refreshes or adds `addr`: `Some(joined)`, or `None` when the table is full even after
    /// removing the clients that are past `interval` (into `expired`). Live clients are never
    /// evicted for a newcomer.
    fn admit(&mut self, addr: SocketAddr, now: f64, expired: &mut Vec<SocketAddr>) -> Option<bool> {
        if let Some(entry) = self.clients.get_mut(&addr) {
            entry.last_seen = now;
            return Some(false);
        }
        if !self.make_room(now, expired) {
            return None;
        }
        self.clients.insert(addr, Entry { last_seen: now });
        Some(true)
    }

    /// True when a newcomer would fit, after removing the clients that are past `interval`
    /// (into `expired`) if the table is full.
    pub fn make_room(&mut self, now: f64, expired: &mut Vec<SocketAddr>) -> bool {
        if self.clients.len() >= self.max_clients {
            self.sweep(now, self.interval, expired);
        }
        self.clients.len() < self.max_clients
    }

    /// Removes `addr`; true when it was in the table.
    pub fn remove(&mut self, addr: &SocketAddr) -> bool {
        self.clients.swap_remove(addr).is_some()
    }

    /// Removes clients silent for more than `max_age` seconds into `expired`, and returns when
    /// the next one would expire if nothing is heard.
    pub fn sweep(&mut self, now: f64, max_age: f64, expired: &mut Vec<SocketAddr>) -> Option<f64> {
        if let Some(limiter) = &mut self.limiter {
            limiter.forget_full(now);
        }
        let mut oldest = f64::INFINITY;
        self.clients.retain(|addr, entry| {
            if now - entry.last_seen > max_age {
                expired.push(*addr);
                false
            } else {
                oldest = oldest.min(entry.last_seen);
                true
            }
        });
        oldest.is_finite().then_some(oldest + max_age)
    }

    fn split_live(&mut self, now: f64, max_age: f64, live: &mut Vec<SocketAddr>, expired: &mut Vec<SocketAddr>) {
        live.clear();
        let first_expired = expired.len();
        for (addr, entry) in &self.clients {
            if now - entry.last_seen > max_age {
                expired.push(*addr);
            } else {
                live.push(*addr);
            }
        }
        for addr in &expired[first_expired..] {
            self.clients.swap_remove(addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn run(relay: &mut Relay, data: &[u8], from: u16, now: f64) -> (Outcome, Vec<SocketAddr>, Vec<SocketAddr>) {
        let (mut live, mut expired) = (Vec::new(), Vec::new());
        let outcome = relay.on_datagram(data, addr(from), now, &mut live, &mut expired);
        (outcome, live, expired)
    }

    #[test]
    fn heartbeat_joins_once_and_refreshes() {
        let mut relay = Relay::new(10.0);
        assert_eq!(run(&mut relay, b"^hb^", 1, 0.0).0, Outcome::Heartbeat { joined: true });
        assert_eq!(run(&mut relay, b" ^hb^\n", 1, 5.0).0, Outcome::Heartbeat { joined: false });
        assert_eq!(relay.iter().collect::<Vec<_>>(), vec![(&addr(1), 5.0)]);
    }

    #[test]
    fn quit_leaves_only_when_present() {
        let mut relay = Relay::new(10.0);
        assert_eq!(run(&mut relay, b"quit", 1, 0.0).0, Outcome::Quit { left: false });
        run(&mut relay, b"^hb^", 1, 0.0);
        assert_eq!(run(&mut relay, b"quit\n", 1, 1.0).0, Outcome::Quit { left: true });
        assert!(relay.is_empty());
    }

    #[test]
    fn chat_reaches_live_clients_and_expires_the_rest() {
        let mut relay = Relay::new(10.0);
        run(&mut relay, b"^hb^", 1, 0.0);
        run(&mut relay, b"^hb^", 2, 5.0);
        run(&mut relay, b"^hb^", 3, 10.0);
        // At 15.0: client 1 is 15 s old (> 10: expired), client 2 exactly 10 s old (kept).
        let (outcome, live, expired) = run(&mut relay, b"hi", 4, 15.0);
        assert_eq!(outcome, Outcome::Chat { joined: true });
        assert_eq!(expired, vec![addr(1)]);
        let mut live = live;
        live.sort();
        assert_eq!(live, vec![addr(2), addr(3), addr(4)]);
        assert!(!relay.contains(&addr(1)));
    }

    #[test]
    fn sender_always_gets_its_own_ack() {
        let mut relay = Relay::new(0.5);
        run(&mut relay, b"^hb^", 1, 0.0);
        let (_, live, expired) = run(&mut relay, b"late", 1, 100.0);
        assert_eq!((live, expired), (vec![addr(1)], vec![]));
    }

    #[test]
    fn full_table_refuses_newcomers_but_makes_room_from_the_expired() {
        let mut relay = Relay::with_limits(10.0, 2, None);
        run(&mut relay, b"^hb^", 1, 0.0);
        run(&mut relay, b"^hb^", 2, 5.0);
        assert_eq!(run(&mut relay, b"^hb^", 3, 6.0).0, Outcome::TableFull);
        assert_eq!(run(&mut relay, b"hi", 3, 6.0).0, Outcome::TableFull);
        // Known clients still talk.
        assert_eq!(run(&mut relay, b"hi", 2, 6.0).0, Outcome::Chat { joined: false });
        // At 11.0 client 1 is past `interval`: it makes room.
        let (outcome, _, expired) = run(&mut relay, b"^hb^", 3, 11.0);
        assert_eq!((outcome, expired), (Outcome::Heartbeat { joined: true }, vec![addr(1)]));
    }

    #[test]
    fn refresh_reports_a_full_table_and_the_clients_it_expired() {
        let mut relay = Relay::with_limits(10.0, 2, None);
        let mut expired = Vec::new();
        assert_eq!(relay.refresh(addr(1), 0.0, &mut expired), Admission::Joined);
        assert_eq!(relay.refresh(addr(2), 5.0, &mut expired), Admission::Joined);
        assert_eq!(relay.refresh(addr(2), 6.0, &mut expired), Admission::Known);
        assert_eq!(relay.refresh(addr(3), 6.0, &mut expired), Admission::TableFull);
        assert!(expired.is_empty() && !relay.contains(&addr(3)));
        // At 11.0 client 1 is past `interval`: it makes room, and the caller learns it left.
        assert_eq!(relay.refresh(addr(3), 11.0, &mut expired), Admission::Joined);
        assert_eq!(expired, vec![addr(1)]);
    }

    #[test]
    fn rate_limit_drops_chat_but_keeps_the_source_alive() {
        let mut relay = Relay::with_limits(10.0, 100, Some(Rate::new(1.0, 2.0).unwrap()));
        assert_eq!(run(&mut relay, b"a", 1, 0.0).0, Outcome::Chat { joined: true });
        assert_eq!(run(&mut relay, b"b", 1, 0.0).0, Outcome::Chat { joined: false });
        assert_eq!(run(&mut relay, b"c", 1, 0.5).0, Outcome::RateLimited { joined: false });
        assert_eq!(run(&mut relay, b"^hb^", 1, 0.6).0, Outcome::Heartbeat { joined: false });
        assert_eq!(relay.iter().next().unwrap().1, 0.6);
        assert_eq!(run(&mut relay, b"d", 1, 1.5).0, Outcome::Chat { joined: false });
    }

    #[test]
    fn leaving_and_joining_again_never_refills_the_bucket() {
        let mut relay = Relay::with_limits(10.0, 100, Some(Rate::new(1.0, 2.0).unwrap()));
        let mut relayed = 0;
        for i in 0..50 {
            let now = f64::from(i) * 0.01;
            run(&mut relay, b"quit", 1, now);
            if let Outcome::Chat { joined } = run(&mut relay, b"m", 1, now).0 {
                assert!(joined);
                relayed += 1;
            }
        }
        assert_eq!(relayed, 2);
        assert_eq!(run(&mut relay, b"m", 1, 1.5).0, Outcome::Chat { joined: false });
    }

    #[test]
    fn sweep_expires_and_reports_next_deadline() {
        let mut relay = Relay::new(10.0);
        run(&mut relay, b"^hb^", 1, 0.0);
        run(&mut relay, b"^hb^", 2, 4.0);
        let mut expired = Vec::new();
        assert_eq!(relay.sweep(10.0, 10.0, &mut expired), Some(10.0));
        assert!(expired.is_empty());
        assert_eq!(relay.sweep(10.5, 10.0, &mut expired), Some(14.0));
        assert_eq!(expired, vec![addr(1)]);
        assert_eq!(relay.sweep(20.0, 10.0, &mut expired), None);
        assert_eq!(relay.len(), 0);
    }
}
