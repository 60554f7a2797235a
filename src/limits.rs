//! Limits a public relay needs: who may talk (`allow`), how fast (a token bucket per source).

use std::net::IpAddr;

use crate::error::{ChatError, Result};

/// One network in CIDR notation, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Network> {
        let invalid = || ChatError::InvalidArgument(format!("{text:?} is not a network like '10.0.0.0/8' or '::1'"));
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
        Ok(Network { base, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.base, ip) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(base)) << 96, self.prefix)
                    == masked(u128::from(u32::from(ip)) << 96, self.prefix)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                masked(u128::from(base), self.prefix) == masked(u128::from(ip), self.prefix)
            }
            _ => false,
        }
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

/// A token bucket; lives in the clients table next to each source's timestamp.
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
        for bad in ["10.0.0.0/33", "nonsense", "1.2.3.4/x", "::1/129"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
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
