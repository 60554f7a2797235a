//! Optional protections, off by default so the wire stays the tutorial's:
//!
//! - address validation (`validate=True`): a new source first gets a short stateless cookie,
//!   `^ck^` + 8 bytes of HMAC(server key, address, time slot), and is served only once it
//!   echoes it. A spoofed source address never sees the cookie, so it can never be subscribed
//!   to the broadcasts (the reflection attack), and the challenge is never more than 3x the
//!   bytes received (QUIC's anti-amplification rule).
//! - authenticated datagrams (`secret=...`): every datagram, both ways, ends with a 40-byte
//!   trailer `sender id (8) | sequence (8) | timestamp in ms (8) | tag (16)`. The tag is
//!   HMAC-SHA256, truncated to 128 bits (as RFC 4868 does), over a fixed context string, the
//!   direction (client to server, or server to client), the payload and the three header
//!   fields. A receiver accepts a datagram only when the tag is right, the direction is its
//!   own, the timestamp is at most [`MAX_AGE_MS`] old and at most [`MAX_AHEAD_MS`] ahead, not
//!   older than the receiver's own start, and the (sender id, sequence) pair was never
//!   accepted before. The replay cache is keyed by that sealed identity, never by the source
//!   address, so a capture replayed from any port is refused; it is bounded, and an entry is
//!   forgotten only once everything it could still refuse is stale anyway.
//!
//! See `docs/SECURITY.md` for the threat model: what this stops and what a group secret
//! cannot stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a cookie challenge and of its echo.
pub const COOKIE_PREFIX: &[u8] = b"^ck^";
const COOKIE_LEN: usize = 8;
/// `^ck^` and the cookie: 12 bytes, within 3x of the 4-byte heartbeat.
pub const CHALLENGE_LEN: usize = COOKIE_PREFIX.len() + COOKIE_LEN;
/// Seconds a cookie stays valid: its own slot and the one after.
const COOKIE_SLOT: f64 = 60.0;

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the system has a random source");
    bytes
}

fn addr_bytes(addr: &SocketAddr) -> Vec<u8> {
    let mut bytes = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    bytes
}

/// Makes and checks address-validation cookies; holds only a random key, no per-source state.
pub struct CookieJar {
    key: [u8; 32],
}

impl Default for CookieJar {
    fn default() -> Self {
        CookieJar { key: random_bytes() }
    }
}

impl CookieJar {
    fn cookie(&self, addr: &SocketAddr, slot: u64) -> [u8; COOKIE_LEN] {
        let mut mac = mac(&self.key);
        mac.update(&addr_bytes(addr));
        mac.update(&slot.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&digest[..COOKIE_LEN]);
        cookie
    }

    fn slot(now: f64) -> u64 {
        (now / COOKIE_SLOT) as u64
    }

    /// The challenge for `addr`, if it fits the 3x budget of the `received` bytes.
    pub fn challenge(&self, addr: &SocketAddr, now: f64, received: usize) -> Option<Vec<u8>> {
        if CHALLENGE_LEN > received.saturating_mul(3) {
            return None;
        }
        Some(self.challenge_bytes(addr, now))
    }

    /// The challenge for `addr`, whatever it sent.
    pub fn challenge_bytes(&self, addr: &SocketAddr, now: f64) -> Vec<u8> {
        let mut challenge = COOKIE_PREFIX.to_vec();
        challenge.extend_from_slice(&self.cookie(addr, Self::slot(now)));
        challenge
    }

    /// True when `data` echoes a cookie made for `addr` in this slot or the previous one.
    pub fn is_valid_echo(&self, data: &[u8], addr: &SocketAddr, now: f64) -> bool {
        if !is_challenge(data) {
            return false;
        }
        let slot = Self::slot(now);
        let echoed = &data[COOKIE_PREFIX.len()..];
        [slot, slot.saturating_sub(1)].iter().any(|&s| constant_time_eq(&self.cookie(addr, s), echoed))
    }
}

/// Sources a request/response server remembers as validated at once; beyond it the oldest
/// validation is forgotten (that client only answers one more challenge).
pub const MAX_VALIDATED: usize = 65_536;
/// Seconds a validation lasts. Requests do not extend it (a spoofer could): the client answers
/// a new challenge after it, so a validated address can be used as a reflector for at most this.
pub const VALIDATED_FOR: f64 = 60.0;

/// What [`AddressGuard::check`] says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The source is validated: answer it.
    Serve,
    /// A good cookie echo: the source is validated now; nothing to answer.
    Validated,
    /// An unvalidated source: send it this challenge, and nothing else.
    Challenge(Vec<u8>),
    /// An unvalidated source whose request cannot pay for a challenge, or a bad echo.
    Drop,
}

/// The reflection guard of the request/response servers (`validate=True` on the echo and time
/// servers): an unvalidated source gets only a 12-byte cookie challenge, never more than 3x
/// the bytes it sent on the wire (IP and UDP headers included, so even the time server's empty
/// request, the tutorial's default format, can be challenged: 40 bytes for 28 over IPv4).
pub struct AddressGuard {
    cookies: CookieJar,
    /// Address -> when it echoed its cookie, oldest first.
    validated: indexmap::IndexMap<SocketAddr, f64>,
}

impl Default for AddressGuard {
    fn default() -> Self {
        AddressGuard { cookies: CookieJar::default(), validated: indexmap::IndexMap::new() }
    }
}

/// IP and UDP header bytes of a datagram from `addr`.
fn header_bytes(addr: &SocketAddr) -> usize {
    if addr.is_ipv4() {
        28
    } else {
        48
    }
}

impl AddressGuard {
    pub fn check(&mut self, request: &[u8], from: SocketAddr, now: f64) -> Verdict {
        if let Some(&since) = self.validated.get(&from) {
            if now - since <= VALIDATED_FOR && now >= since {
                // A repeated echo (a duplicate, or an answer to a second challenge) is absorbed.
                let echo = is_challenge(request) && self.cookies.is_valid_echo(request, &from, now);
                return if echo { Verdict::Validated } else { Verdict::Serve };
            }
            self.validated.shift_remove(&from);
        }
        if self.cookies.is_valid_echo(request, &from, now) {
            if self.validated.len() >= MAX_VALIDATED {
                self.validated.shift_remove_index(0);
            }
            self.validated.insert(from, now);
            return Verdict::Validated;
        }
        let header = header_bytes(&from);
        if CHALLENGE_LEN + header > (request.len() + header).saturating_mul(3) {
            return Verdict::Drop;
        }
        Verdict::Challenge(self.cookies.challenge_bytes(&from, now))
    }

    /// Sources validated now (some may be past [`VALIDATED_FOR`], forgotten when next heard).
    pub fn validated(&self) -> usize {
        self.validated.len()
    }
}

/// Chat messages held per source while its challenge is in flight.
pub const HOLD_PER_SOURCE: usize = 8;
/// Sources whose messages are held at once.
pub const HOLD_SOURCES: usize = 1024;
/// Bytes held in all.
pub const HOLD_BYTES: usize = 1 << 20;
/// Seconds a held message waits for its source to answer the challenge (a cookie's life).
pub const HOLD_FOR: f64 = COOKIE_SLOT;

struct Held {
    since: f64,
    messages: Vec<Vec<u8>>,
}

/// Chat messages of sources that have not answered their challenge yet, delivered once they
/// do (`validate=True` on the chat server): a client's first messages are not lost to the
/// challenge round trip. Bounded per source, in sources and in bytes; what does not fit, or
/// waits longer than [`HOLD_FOR`], is dropped and counted by the caller.
#[derive(Default)]
pub struct HoldQueue {
    held: HashMap<SocketAddr, Held>,
    bytes: usize,
}

impl HoldQueue {
    /// Holds `message` from `from`; returns how many held messages were dropped to make room
    /// (the oldest source's), or 1 when `message` itself cannot be held.
    pub fn hold(&mut self, from: SocketAddr, message: &[u8], now: f64) -> usize {
        if message.len() > HOLD_BYTES {
            return 1;
        }
        if self.held.get(&from).is_some_and(|h| h.messages.len() >= HOLD_PER_SOURCE) {
            return 1;
        }
        let mut dropped = 0;
        while self.bytes + message.len() > HOLD_BYTES
            || (!self.held.contains_key(&from) && self.held.len() >= HOLD_SOURCES)
        {
            let oldest = self.held.iter().min_by(|a, b| a.1.since.total_cmp(&b.1.since)).map(|(addr, _)| *addr);
            match oldest {
                Some(addr) => dropped += self.drop_source(&addr),
                None => return dropped + 1,
            }
        }
        self.bytes += message.len();
        self.held
            .entry(from)
            .or_insert_with(|| Held { since: now, messages: Vec::new() })
            .messages
            .push(message.to_vec());
        dropped
    }

    /// The messages held for `from`, oldest first, now that it has answered.
    pub fn release(&mut self, from: &SocketAddr) -> Vec<Vec<u8>> {
        match self.held.remove(from) {
            Some(held) => {
                self.bytes -= held.messages.iter().map(Vec::len).sum::<usize>();
                held.messages
            }
            None => Vec::new(),
        }
    }

    /// Drops what waited longer than [`HOLD_FOR`]; returns how many messages.
    pub fn expire(&mut self, now: f64) -> usize {
        let old: Vec<SocketAddr> =
            self.held.iter().filter(|(_, h)| now - h.since > HOLD_FOR).map(|(addr, _)| *addr).collect();
        old.iter().map(|addr| self.drop_source(addr)).sum()
    }

    fn drop_source(&mut self, addr: &SocketAddr) -> usize {
        self.release(addr).len()
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.held.values().map(|h| h.messages.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// A challenge, and its echo, have this shape: `^ck^` and 8 bytes.
pub fn is_challenge(data: &[u8]) -> bool {
    data.len() == CHALLENGE_LEN && data.starts_with(COOKIE_PREFIX)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bound into every tag, so a tag made for another protocol or version never verifies here.
const CONTEXT: &[u8] = b"chatudp sealed datagram v2";
const SENDER_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Sender id (8) + sequence (8) + timestamp (8) + tag (16).
pub const TRAILER_LEN: usize = SENDER_LEN + 8 + 8 + TAG_LEN;
/// A datagram sealed longer ago than this, by the receiver's clock, is refused as stale.
pub const MAX_AGE_MS: u64 = 25_000;
/// A datagram stamped further than this in the receiver's future is refused as stale: senders'
/// clocks may run this much ahead. Together with [`MAX_AGE_MS`], a datagram is accepted at
/// most 30 s after it was sealed, whatever the sender's clock says.
pub const MAX_AHEAD_MS: u64 = 5_000;
/// Out-of-order datagrams accepted behind the newest sequence seen from a sender.
const REPLAY_WINDOW: u64 = 64;
/// The fullest replay cache is swept for stale senders at most this often.
const SWEEP_EVERY_MS: u64 = 1_000;

/// Which way a sealed datagram travels; bound into its tag, so a receiver never accepts a
/// datagram sealed by its own side (a server's Ack sent back to a server, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

impl Direction {
    fn label(self) -> u8 {
        match self {
            Direction::ToServer => 1,
            Direction::ToClient => 2,
        }
    }
}

fn keyed(secret: &[u8], direction: Direction) -> HmacSha256 {
    let mut mac = mac(secret);
    mac.update(CONTEXT);
    mac.update(&[direction.label()]);
    mac
}

fn millis(now: f64) -> u64 {
    (now.max(0.0) * 1000.0) as u64
}

/// Appends trailers with a shared secret, for one direction.
pub struct Sealer {
    /// Keyed and fed the context once; cloned for each datagram.
    mac: HmacSha256,
    /// Random per sealer: a restarted sender is a new sender, with its own sequence.
    sender: [u8; SENDER_LEN],
    sequence: u64,
}

impl Sealer {
    pub fn new(secret: &[u8], direction: Direction) -> Sealer {
        Sealer { mac: keyed(secret, direction), sender: random_bytes(), sequence: 0 }
    }

    /// Writes `payload` and its trailer into `out`.
    pub fn seal(&mut self, payload: &[u8], now: f64, out: &mut Vec<u8>) {
        self.sequence += 1;
        out.clear();
        out.reserve(payload.len() + TRAILER_LEN);
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&millis(now).to_be_bytes());
        let mut mac = self.mac.clone();
        mac.update(out);
        out.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    newest: u64,
    /// Bit i set: sequence `newest - i` was accepted.
    seen: u64,
    /// The latest timestamp accepted from this sender: once it is stale, so is every datagram
    /// this window could still refuse, and the window may be forgotten.
    latest_millis: u64,
}

impl ReplayWindow {
    fn accept(&mut self, sequence: u64, stamp: u64) -> bool {
        if sequence > self.newest {
            let shift = sequence - self.newest;
            self.seen = if shift >= 64 { 1 } else { (self.seen << shift) | 1 };
            self.newest = sequence;
        } else {
            let age = self.newest - sequence;
            if age >= REPLAY_WINDOW || self.seen & (1 << age) != 0 {
                return false;
            }
            self.seen |= 1 << age;
        }
        self.latest_millis = self.latest_millis.max(stamp);
        true
    }
}

/// Why a datagram failed [`Opener::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Shorter than a trailer: not sealed at all.
    TooShort,
    /// The tag is wrong: another secret, another direction, or altered bytes.
    BadTag,
    /// Sealed too long ago, too far in the future, or before this receiver started.
    Stale,
    /// This sender's sequence number was accepted already (or is too far behind).
    Replayed,
    /// The replay cache is full of senders heard from within the freshness window.
    CacheFull,
}

impl Refused {
    pub const ALL: [Refused; 5] =
        [Refused::TooShort, Refused::BadTag, Refused::Stale, Refused::Replayed, Refused::CacheFull];

    /// The key in the Python `stats["auth_refused"]` dict.
    pub fn name(self) -> &'static str {
        match self {
            Refused::TooShort => "too_short",
            Refused::BadTag => "bad_tag",
            Refused::Stale => "stale",
            Refused::Replayed => "replayed",
            Refused::CacheFull => "cache_full",
        }
    }
}

/// Counts of [`Refused`] datagrams, by reason.
#[derive(Debug, Default)]
pub struct RefusalCounters([AtomicU64; Refused::ALL.len()]);

impl RefusalCounters {
    pub fn count(&self, why: Refused) {
        self.0[why as usize].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(Refused, u64)> {
        Refused::ALL.iter().map(|&r| (r, self.0[r as usize].load(Relaxed))).collect()
    }
}

/// Checks trailers for one direction and remembers what each sender sent.
pub struct Opener {
    mac: HmacSha256,
    /// Nothing sealed before this receiver started is accepted: a restart, which empties the
    /// replay cache, does not reopen the captures of the last 30 s.
    started_millis: u64,
    windows: HashMap<[u8; SENDER_LEN], ReplayWindow>,
    max_senders: usize,
    last_sweep_millis: u64,
}

impl Opener {
    /// An opener for datagrams travelling `direction`, started at `now`, remembering at most
    /// `max_senders` senders at once.
    pub fn new(secret: &[u8], direction: Direction, now: f64, max_senders: usize) -> Opener {
        Opener {
            mac: keyed(secret, direction),
            started_millis: millis(now),
            windows: HashMap::new(),
            max_senders: max_senders.max(1),
            last_sweep_millis: 0,
        }
    }

    /// Senders remembered now.
    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    /// The payload of an authentic, fresh, first-seen datagram.
    pub fn open<'a>(&mut self, datagram: &'a [u8], now: f64) -> Result<&'a [u8], Refused> {
        let body_len = datagram.len().checked_sub(TRAILER_LEN).ok_or(Refused::TooShort)?;
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.verify_truncated_left(tag).map_err(|_| Refused::BadTag)?;
        let header = &datagram[body_len..];
        let sender: [u8; SENDER_LEN] = header[..SENDER_LEN].try_into().expect("8 bytes");
        let sequence = u64::from_be_bytes(header[SENDER_LEN..SENDER_LEN + 8].try_into().expect("8 bytes"));
        let stamp = u64::from_be_bytes(header[SENDER_LEN + 8..SENDER_LEN + 16].try_into().expect("8 bytes"));
        let now_millis = millis(now);
        if stamp < self.started_millis
            || now_millis.saturating_sub(stamp) > MAX_AGE_MS
            || stamp.saturating_sub(now_millis) > MAX_AHEAD_MS
        {
            return Err(Refused::Stale);
        }
        if !self.windows.contains_key(&sender) && self.windows.len() >= self.max_senders {
            self.forget_stale(now_millis);
            if self.windows.len() >= self.max_senders {
                return Err(Refused::CacheFull);
            }
        }
        if !self.windows.entry(sender).or_default().accept(sequence, stamp) {
            return Err(Refused::Replayed);
        }
        Ok(&datagram[..body_len])
    }

    /// Forgets senders whose every accepted datagram is stale now (at most once a second, so
    /// a full cache costs one scan a second, not one per datagram).
    fn forget_stale(&mut self, now_millis: u64) {
        if now_millis.saturating_sub(self.last_sweep_millis) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_millis = now_millis;
        self.windows.retain(|_, w| now_millis.saturating_sub(w.latest_millis) <= MAX_AGE_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const UP: Direction = Direction::ToServer;

    #[test]
    fn cookies_are_bound_to_address_and_time() {
        let jar = CookieJar::default();
        let challenge = jar.challenge(&addr(1), 100.0, 4).unwrap();
        assert_eq!(challenge.len(), CHALLENGE_LEN);
        assert!(is_challenge(&challenge));
        assert!(jar.is_valid_echo(&challenge, &addr(1), 100.0));
        assert!(jar.is_valid_echo(&challenge, &addr(1), 150.0));
        assert!(!jar.is_valid_echo(&challenge, &addr(2), 100.0));
        assert!(!jar.is_valid_echo(&challenge, &addr(1), 400.0));
        assert!(!CookieJar::default().is_valid_echo(&challenge, &addr(1), 100.0));
    }

    #[test]
    fn challenges_respect_the_amplification_budget() {
        let jar = CookieJar::default();
        assert!(jar.challenge(&addr(1), 0.0, 0).is_none());
        assert!(jar.challenge(&addr(1), 0.0, 3).is_none());
        assert!(jar.challenge(&addr(1), 0.0, 4).is_some());
    }

    #[test]
    fn the_guard_serves_only_validated_sources_and_only_for_a_while() {
        let mut guard = AddressGuard::default();
        let Verdict::Challenge(challenge) = guard.check(b"", addr(1), 100.0) else { panic!("challenge expected") };
        assert_eq!(challenge.len(), CHALLENGE_LEN);
        assert!(matches!(guard.check(b"%Y", addr(1), 100.0), Verdict::Challenge(_)));
        // Another address cannot use the cookie.
        assert!(matches!(guard.check(&challenge, addr(2), 100.0), Verdict::Challenge(_)));
        assert_eq!(guard.check(&challenge, addr(1), 100.5), Verdict::Validated);
        assert_eq!(guard.check(b"%Y", addr(1), 101.0), Verdict::Serve);
        // A second echo is absorbed, never served as a request.
        assert_eq!(guard.check(&challenge, addr(1), 101.0), Verdict::Validated);
        // ... while a request of the same shape that is no cookie of ours is served.
        assert_eq!(guard.check(b"^ck^12345678", addr(1), 101.0), Verdict::Serve);
        // Requests do not extend the validation.
        assert_eq!(guard.check(b"%Y", addr(1), 100.5 + VALIDATED_FOR), Verdict::Serve);
        assert!(matches!(guard.check(b"%Y", addr(1), 101.0 + VALIDATED_FOR), Verdict::Challenge(_)));
        assert_eq!(guard.validated(), 0);
    }

    #[test]
    fn the_hold_queue_keeps_first_messages_in_order_within_its_bounds() {
        let mut queue = HoldQueue::default();
        for i in 0..HOLD_PER_SOURCE {
            assert_eq!(queue.hold(addr(1), format!("m{i}").as_bytes(), 0.0), 0);
        }
        assert_eq!(queue.hold(addr(1), b"one too many", 0.0), 1);
        assert_eq!(queue.release(&addr(1))[..2], [b"m0".to_vec(), b"m1".to_vec()]);
        assert!(queue.release(&addr(1)).is_empty());
        // Bytes: a big message pushes out the oldest source.
        assert_eq!(queue.hold(addr(2), &vec![0; HOLD_BYTES / 2], 1.0), 0);
        assert_eq!(queue.hold(addr(3), &vec![0; HOLD_BYTES / 2], 2.0), 0);
        assert_eq!(queue.hold(addr(4), b"x", 3.0), 1);
        assert_eq!(queue.release(&addr(2)).len(), 0);
        assert_eq!(queue.hold(addr(5), &vec![0; HOLD_BYTES + 1], 3.0), 1);
        // Sources.
        let mut queue = HoldQueue::default();
        for port in 0..HOLD_SOURCES as u16 {
            queue.hold(addr(port), b"x", f64::from(port));
        }
        assert_eq!(queue.hold(addr(60_000), b"x", 1e4), 1);
        assert_eq!(queue.len(), HOLD_SOURCES);
        assert!(queue.release(&addr(0)).is_empty());
        assert_eq!(queue.expire(1e4), HOLD_SOURCES - 1);
        assert_eq!(queue.expire(1e4 + HOLD_FOR + 1.0), 1);
        assert!(queue.is_empty());
    }

    #[test]
    fn sealed_datagrams_open_once_in_any_order_within_the_window() {
        let mut sealer = Sealer::new(b"secret", UP);
        let mut opener = Opener::new(b"secret", UP, 1000.0, 16);
        let mut first = Vec::new();
        sealer.seal(b"hello", 1000.0, &mut first);
        assert_eq!(first.len(), 5 + TRAILER_LEN);
        assert_eq!(opener.open(&first, 1000.0), Ok(&b"hello"[..]));
        assert_eq!(opener.open(&first, 1000.0), Err(Refused::Replayed));
        let (mut second, mut third) = (Vec::new(), Vec::new());
        sealer.seal(b"two", 1000.0, &mut second);
        sealer.seal(b"three", 1000.0, &mut third);
        assert_eq!(opener.open(&third, 1000.0), Ok(&b"three"[..]));
        assert_eq!(opener.open(&second, 1000.0), Ok(&b"two"[..]));
        assert_eq!(opener.open(&second, 1001.0), Err(Refused::Replayed));
        // Too far behind the newest sequence: refused, even if never seen.
        let mut old = Vec::new();
        sealer.seal(b"old", 1000.0, &mut old);
        let mut newest = Vec::new();
        for _ in 0..REPLAY_WINDOW {
            sealer.seal(b"n", 1000.0, &mut newest);
        }
        assert!(opener.open(&newest, 1000.0).is_ok());
        assert_eq!(opener.open(&old, 1000.0), Err(Refused::Replayed));
    }

    #[test]
    fn the_direction_is_bound_into_the_tag() {
        let mut server = Sealer::new(b"secret", Direction::ToClient);
        let mut ack = Vec::new();
        server.seal(b"Ack b'HI'. from 127.0.0.1:1", 10.0, &mut ack);
        // Sent back to a server, the server's own datagram does not verify.
        assert_eq!(Opener::new(b"secret", UP, 10.0, 4).open(&ack, 10.0), Err(Refused::BadTag));
        assert!(Opener::new(b"secret", Direction::ToClient, 10.0, 4).open(&ack, 10.0).is_ok());
        let mut client = Sealer::new(b"secret", UP);
        let mut hb = Vec::new();
        client.seal(b"^hb^", 10.0, &mut hb);
        assert_eq!(Opener::new(b"secret", Direction::ToClient, 10.0, 4).open(&hb, 10.0), Err(Refused::BadTag));
    }

    #[test]
    fn freshness_is_at_most_thirty_seconds_and_never_before_the_start() {
        let mut sealer = Sealer::new(b"secret", UP);
        let mut sealed = Vec::new();
        sealer.seal(b"x", 100.0, &mut sealed);
        let open_at = |at: f64| Opener::new(b"secret", UP, 0.0, 4).open(&sealed, at).map(<[u8]>::to_vec);
        assert!(open_at(100.0 + MAX_AGE_MS as f64 / 1000.0).is_ok());
        assert_eq!(open_at(100.0 + MAX_AGE_MS as f64 / 1000.0 + 0.01), Err(Refused::Stale));
        assert!(open_at(100.0 - MAX_AHEAD_MS as f64 / 1000.0).is_ok());
        assert_eq!(open_at(100.0 - MAX_AHEAD_MS as f64 / 1000.0 - 0.01), Err(Refused::Stale));
        // A restarted receiver refuses what was sealed before it started, fresh or not.
        assert_eq!(Opener::new(b"secret", UP, 100.5, 4).open(&sealed, 101.0), Err(Refused::Stale));
        assert_eq!(MAX_AGE_MS + MAX_AHEAD_MS, 30_000);
    }

    #[test]
    fn forged_and_short_datagrams_are_refused() {
        let mut sealer = Sealer::new(b"secret", UP);
        let mut opener = Opener::new(b"secret", UP, 0.0, 16);
        let mut sealed = Vec::new();
        sealer.seal(b"quit", 1000.0, &mut sealed);
        for at in 0..sealed.len() {
            let mut forged = sealed.clone();
            forged[at] ^= 1;
            assert_eq!(opener.open(&forged, 1000.0), Err(Refused::BadTag), "byte {at}");
        }
        assert_eq!(Opener::new(b"other", UP, 0.0, 16).open(&sealed, 1000.0), Err(Refused::BadTag));
        assert_eq!(opener.open(b"quit", 1000.0), Err(Refused::TooShort));
        assert_eq!(opener.open(&sealed, 1000.0), Ok(&b"quit"[..]));
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_only_stale_senders() {
        let mut opener = Opener::new(b"secret", UP, 0.0, 2);
        let mut sealed = Vec::new();
        let mut first = Vec::new();
        Sealer::new(b"secret", UP).seal(b"a", 10.0, &mut first);
        assert!(opener.open(&first, 10.0).is_ok());
        Sealer::new(b"secret", UP).seal(b"b", 10.0, &mut sealed);
        assert!(opener.open(&sealed, 10.0).is_ok());
        // Full of fresh senders: a third is refused rather than forgetting one of them.
        Sealer::new(b"secret", UP).seal(b"c", 12.0, &mut sealed);
        assert_eq!(opener.open(&sealed, 12.0), Err(Refused::CacheFull));
        assert_eq!(opener.senders(), 2);
        // Once they are stale they make room, and their datagrams stay refused (as stale).
        let later = 10.0 + MAX_AGE_MS as f64 / 1000.0 + 1.0;
        Sealer::new(b"secret", UP).seal(b"d", later, &mut sealed);
        assert!(opener.open(&sealed, later).is_ok());
        assert_eq!(opener.senders(), 1);
        assert_eq!(opener.open(&first, later), Err(Refused::Stale));
    }
}
