//! Limits a public relay needs: who may talk (`allow`), how fast (a token bucket per source,
//! kept by a [`RateLimiter`] apart from the clients table, so that leaving and joining again
//! never refills a bucket).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::error::{ChatError, Result};

/// One network in CIDR notation, e.g. `10.0.0.0/8` or `::1/128`.
///
/// Kept in IPv6 form, IPv4 networks as their IPv4-mapped range (`10.0.0.0/8` is
/// `::ffff:10.0.0.0/104`), and addresses compared in the same form: an IPv4 client of a
/// dual-stack `'::'` socket, which shows up as `::ffff:a.b.c.d`, is then admitted by either
/// spelling of its network (`127.0.0.0/8`, `::ffff:127.0.0.0/104`, `::ffff:0:0/96`, `::/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: u128,
    prefix: u8,
}

/// An address in the IPv6 space, IPv4 as IPv4-mapped.
fn as_v6_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Network {
    pub fn parse(text: &str) -> Result<Network> {
        let invalid =
            || crate::config::invalid("allow", "networks like '10.0.0.0/8' or '::1/128'", format!("{text:?}"));
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let base: IpAddr = addr.trim().parse().map_err(|_| invalid())?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(invalid)?,
            None => bits,
        };
        let prefix = prefix + (128 - bits);
        Ok(Network { base: masked(as_v6_bits(base), prefix), prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        masked(as_v6_bits(ip), self.prefix) == self.base
    }
}

fn masked(bits: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    }
}

/// Messages per second and burst for one source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub fn new(per_second: f64, burst: f64) -> Result<Rate> {
        if per_second.is_finite() && per_second > 0.0 && burst.is_finite() && burst >= 1.0 {
            Ok(Rate { per_second, burst })
        } else {
            Err(ChatError::InvalidArgument(format!(
                "rate must be (messages per second > 0, burst >= 1), not ({per_second}, {burst})"
            )))
        }
    }
}

/// A token bucket for one source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    updated: f64,
}

impl Bucket {
    pub fn full(rate: Rate, now: f64) -> Bucket {
        Bucket { tokens: rate.burst, updated: now }
    }

    /// Takes one token; false when the source is over its rate.
    pub fn take(&mut self, rate: Rate, now: f64) -> bool {
        let elapsed = (now - self.updated).max(0.0);
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Bucket {
    /// True when the bucket has refilled to its burst by `now`: then it is the same as a new
    /// one, and forgetting it gives its source nothing.
    pub fn is_full(&self, rate: Rate, now: f64) -> bool {
        self.tokens + (now - self.updated).max(0.0) * rate.per_second >= rate.burst
    }
}

/// Token buckets per source address, kept apart from the clients table: a source that sends
/// `quit`, expires, or validates again finds its bucket as it left it. Bounded: a bucket that
/// has refilled is forgotten (it equals a new one), and beyond `capacity` depleted buckets
/// the scan for refilled ones runs at most once a second, else an arbitrary bucket goes
/// (counted in [`RateLimiter::evicted`]): only `capacity` sources all over their rate at once
/// can cause that.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: HashMap<SocketAddr, Bucket>,
    capacity: usize,
    last_scan: f64,
    evicted: u64,
}

impl RateLimiter {
    pub fn new(rate: Rate, capacity: usize) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: HashMap::new(),
            capacity: capacity.max(1),
            last_scan: f64::NEG_INFINITY,
            evicted: 0,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token from `addr`'s bucket; false when the source is over its rate.
    pub fn take(&mut self, addr: SocketAddr, now: f64) -> bool {
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= self.capacity {
            if now - self.last_scan >= 1.0 {
                self.forget_full(now);
            }
            if self.buckets.len() >= self.capacity {
                let victim = *self.buckets.keys().next().expect("capacity is at least 1");
                self.buckets.remove(&victim);
                self.evicted += 1;
            }
        }
        let rate = self.rate;
        self.buckets.entry(addr).or_insert_with(|| Bucket::full(rate, now)).take(rate, now)
    }

    /// Forgets the buckets that have refilled; the server calls it from its timer.
    pub fn forget_full(&mut self, now: f64) {
        self.last_scan = now;
        let rate = self.rate;
        self.buckets.retain(|_, bucket| !bucket.is_full(rate, now));
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Depleted buckets dropped to stay within `capacity`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Network::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!Network::parse("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        assert!(Network::parse("::/0").unwrap().contains("::1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(!Network::parse("::1/128").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!Network::parse("0.0.0.0/0").unwrap().contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "1.2.3.4/x", "::1/129"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_socket_matches_both_spellings() {
        let shown: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let plain: IpAddr = "127.0.0.1".parse().unwrap();
        for net in ["::ffff:127.0.0.1", "::ffff:0:0/96", "::/0", "127.0.0.0/8", "::ffff:127.0.0.0/104", "127.0.0.1"] {
            let net = Network::parse(net).unwrap();
            assert!(net.contains(shown) && net.contains(plain), "{net:?}");
        }
        for net in ["::1", "10.0.0.0/8", "::ffff:10.0.0.0/104", "::ffff:8000:0/97", "fe80::/10"] {
            let net = Network::parse(net).unwrap();
            assert!(!net.contains(shown) && !net.contains(plain), "{net:?}");
        }
        // The IPv4-compatible form (deprecated) is a different address.
        assert!(!Network::parse("127.0.0.1").unwrap().contains("::127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_limiter_remembers_a_source_whatever_it_does_in_between() {
        let rate = Rate::new(1.0, 2.0).unwrap();
        let mut limiter = RateLimiter::new(rate, 16);
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let allowed = (0..50).filter(|i| limiter.take(a, f64::from(*i) * 0.01)).count();
        assert_eq!(allowed, 2);
        // Refilled after burst / rate seconds, and then forgotten: it equals a new bucket.
        limiter.forget_full(0.5);
        assert_eq!(limiter.len(), 1);
        limiter.forget_full(2.6);
        assert!(limiter.is_empty());
    }

    #[test]
    fn the_limiter_is_bounded_and_forgets_refilled_buckets_first() {
        let rate = Rate::new(1.0, 1.0).unwrap();
        let mut limiter = RateLimiter::new(rate, 2);
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert!(limiter.take(addr(1), 0.0) && limiter.take(addr(2), 0.5));
        // At 1.2 the first bucket has refilled: it makes room, the second stays depleted.
        assert!(limiter.take(addr(3), 1.2));
        assert_eq!((limiter.len(), limiter.evicted()), (2, 0));
        assert!(!limiter.take(addr(2), 1.2));
        // All depleted and scanned within the second: one is evicted, and counted.
        assert!(limiter.take(addr(4), 1.3));
        assert_eq!((limiter.len(), limiter.evicted()), (2, 1));
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let rate = Rate::new(10.0, 3.0).unwrap();
        let mut bucket = Bucket::full(rate, 0.0);
        assert!((0..3).all(|_| bucket.take(rate, 0.0)));
        assert!(!bucket.take(rate, 0.0));
        assert!(!bucket.take(rate, 0.05));
        assert!(bucket.take(rate, 0.1));
        assert!(Rate::new(0.0, 1.0).is_err() && Rate::new(1.0, 0.5).is_err());
    }
}
