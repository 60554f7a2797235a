//! Optional protections, off by default so the wire stays the tutorial's:
//!
//! - address validation (`validate=True`): a new source first gets a short stateless cookie,
//!   `^ck^` + 8 bytes of HMAC(server key, address, time slot), and joins only once it echoes
//!   it. A spoofed source address never sees the cookie, so it can never be subscribed to the
//!   broadcasts (the reflection attack), and the challenge is never more than 3x the bytes
//!   received (QUIC's anti-amplification rule).
//! - authenticated datagrams (`secret=...`): every datagram, both ways, ends with a 32-byte
//!   trailer: a timestamp, a counter and a truncated HMAC-SHA256 over payload, timestamp and
//!   counter. Forged, stale and replayed datagrams are dropped.

use std::collections::HashMap;
use std::net::SocketAddr;

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

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the system has a random source");
    key
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
        CookieJar { key: random_key() }
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
        let mut challenge = COOKIE_PREFIX.to_vec();
        challenge.extend_from_slice(&self.cookie(addr, Self::slot(now)));
        Some(challenge)
    }

    /// True when `data` echoes a cookie made for `addr` in this slot or the previous one.
    pub fn is_valid_echo(&self, data: &[u8], addr: &SocketAddr, now: f64) -> bool {
        if data.len() != CHALLENGE_LEN || !data.starts_with(COOKIE_PREFIX) {
            return false;
        }
        let slot = Self::slot(now);
        let echoed = &data[COOKIE_PREFIX.len()..];
        [slot, slot.saturating_sub(1)].iter().any(|&s| constant_time_eq(&self.cookie(addr, s), echoed))
    }
}

/// What a client answers to a challenge: the same bytes.
pub fn is_challenge(data: &[u8]) -> bool {
    data.len() == CHALLENGE_LEN && data.starts_with(COOKIE_PREFIX)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const TAG_LEN: usize = 16;
/// Timestamp (8) + counter (8) + tag (16).
pub const TRAILER_LEN: usize = 32;
/// Datagrams whose timestamp is further than this from our clock are refused.
const MAX_SKEW_MS: u64 = 120_000;
/// Out-of-order datagrams accepted behind the newest counter seen from a source.
const REPLAY_WINDOW: u64 = 64;

/// Appends trailers with a shared secret.
pub struct Sealer {
    secret: Vec<u8>,
    counter: u64,
}

impl Sealer {
    /// The counter starts from the clock, so a restarted sender is not mistaken for a replayer.
    pub fn new(secret: &[u8], now: f64) -> Sealer {
        Sealer { secret: secret.to_vec(), counter: (now * 1e6) as u64 }
    }

    /// Writes `payload` and its trailer into `out`.
    pub fn seal(&mut self, payload: &[u8], now: f64, out: &mut Vec<u8>) {
        self.counter += 1;
        let millis = (now * 1000.0) as u64;
        out.clear();
        out.extend_from_slice(payload);
        out.extend_from_slice(&millis.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        let mut mac = mac(&self.secret);
        mac.update(out);
        out.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    newest: u64,
    /// Bit i set: counter `newest - i` was seen.
    seen: u64,
    last_millis: u64,
}

impl ReplayWindow {
    fn accept(&mut self, counter: u64, millis: u64) -> bool {
        if counter > self.newest {
            let shift = counter - self.newest;
            self.seen = if shift >= 64 { 1 } else { (self.seen << shift) | 1 };
            self.newest = counter;
        } else {
            let age = self.newest - counter;
            if age >= REPLAY_WINDOW || self.seen & (1 << age) != 0 {
                return false;
            }
            self.seen |= 1 << age;
        }
        self.last_millis = self.last_millis.max(millis);
        true
    }
}

/// Checks trailers and remembers counters per source.
pub struct Opener {
    secret: Vec<u8>,
    windows: HashMap<SocketAddr, ReplayWindow>,
    max_sources: usize,
}

/// Why a datagram failed [`Opener::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooShort,
    BadTag,
    Stale,
    Replayed,
}

impl Opener {
    pub fn new(secret: &[u8], max_sources: usize) -> Opener {
        Opener { secret: secret.to_vec(), windows: HashMap::new(), max_sources: max_sources.max(1) }
    }

    /// The payload of an authentic, fresh, first-seen datagram.
    pub fn open<'a>(&mut self, datagram: &'a [u8], from: SocketAddr, now: f64) -> Result<&'a [u8], Refused> {
        let body_len = datagram.len().checked_sub(TRAILER_LEN).ok_or(Refused::TooShort)?;
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut mac = mac(&self.secret);
        mac.update(signed);
        mac.verify_truncated_left(tag).map_err(|_| Refused::BadTag)?;
        let millis = u64::from_be_bytes(datagram[body_len..body_len + 8].try_into().expect("8 bytes"));
        let counter = u64::from_be_bytes(datagram[body_len + 8..body_len + 16].try_into().expect("8 bytes"));
        let now_millis = (now * 1000.0) as u64;
        if now_millis.abs_diff(millis) > MAX_SKEW_MS {
            return Err(Refused::Stale);
        }
        if self.windows.len() >= self.max_sources && !self.windows.contains_key(&from) {
            // Forget sources not heard from within the skew window: their old datagrams are stale anyway.
            self.windows.retain(|_, w| now_millis.saturating_sub(w.last_millis) <= MAX_SKEW_MS);
        }
        let window = self.windows.entry(from).or_default();
        if !window.accept(counter, millis) {
            return Err(Refused::Replayed);
        }
        Ok(&datagram[..body_len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

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
    fn sealed_datagrams_open_once() {
        let mut sealer = Sealer::new(b"secret", 1000.0);
        let mut opener = Opener::new(b"secret", 16);
        let mut first = Vec::new();
        sealer.seal(b"hello", 1000.0, &mut first);
        assert_eq!(first.len(), 5 + TRAILER_LEN);
        assert_eq!(opener.open(&first, addr(1), 1000.0), Ok(&b"hello"[..]));
        assert_eq!(opener.open(&first, addr(1), 1000.0), Err(Refused::Replayed));
        let mut second = Vec::new();
        let mut third = Vec::new();
        sealer.seal(b"two", 1000.0, &mut second);
        sealer.seal(b"three", 1000.0, &mut third);
        // Reordering within the window is fine.
        assert_eq!(opener.open(&third, addr(1), 1000.0), Ok(&b"three"[..]));
        assert_eq!(opener.open(&second, addr(1), 1000.0), Ok(&b"two"[..]));
        assert_eq!(opener.open(&second, addr(1), 1000.0), Err(Refused::Replayed));
    }

    #[test]
    fn forged_stale_and_short_datagrams_are_refused() {
        let mut sealer = Sealer::new(b"secret", 0.0);
        let mut opener = Opener::new(b"secret", 16);
        let mut sealed = Vec::new();
        sealer.seal(b"quit", 1000.0, &mut sealed);
        let mut forged = sealed.clone();
        forged[0] ^= 1;
        assert_eq!(opener.open(&forged, addr(1), 1000.0), Err(Refused::BadTag));
        assert_eq!(Opener::new(b"other", 16).open(&sealed, addr(1), 1000.0), Err(Refused::BadTag));
        assert_eq!(opener.open(&sealed, addr(1), 2000.0), Err(Refused::Stale));
        assert_eq!(opener.open(b"quit", addr(1), 1000.0), Err(Refused::TooShort));
    }
}
