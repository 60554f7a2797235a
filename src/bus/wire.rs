//! The records relays exchange on a room's subject or channel: compact, versioned, big-endian.
//!
//! ```text
//! magic "CUDP" | version 1 | kind | origin relay id u64 | seq u64 | body
//!   chat:     family 4|6, ip (4|16 bytes), port u16, [flowinfo u32, scope_id u32 for 6], payload
//!   announce: clients u32, period_ms u32        (seq = last sequence number handled)
//!   goodbye:  nothing                            (seq = last sequence number handled)
//! ```
//!
//! Anything else on the subject (another program's messages, a newer version) is `Foreign`; a
//! record with our magic and version that does not parse is `Malformed`. Both are counted and
//! dropped by the receiver, never delivered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

pub const MAGIC: &[u8; 4] = b"CUDP";
pub const VERSION: u8 = 1;
/// Magic, version, kind, origin, sequence number.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 8;
/// Where the sequence number sits, for the bus thread that reads it back without decoding.
pub const SEQ_OFFSET: usize = 4 + 1 + 1 + 8;

const KIND_CHAT: u8 = 1;
const KIND_ANNOUNCE: u8 = 2;
const KIND_GOODBYE: u8 = 3;

/// One decoded record, borrowing the payload from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A chat message a relay accepted from one of its clients.
    Chat { origin: u64, seq: u64, from: SocketAddr, payload: &'a [u8] },
    /// "I am alive, with this many clients; my last sequence number was `seq`."
    Announce { origin: u64, seq: u64, clients: u32, period_ms: u32 },
    /// "I am stopping; my last sequence number was `seq`."
    Goodbye { origin: u64, seq: u64 },
}

impl Record<'_> {
    pub fn origin(&self) -> u64 {
        match self {
            Record::Chat { origin, .. } | Record::Announce { origin, .. } | Record::Goodbye { origin, .. } => *origin,
        }
    }
}

/// Why received bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Not ours: another magic, or a version this relay does not speak.
    Foreign,
    /// Our magic and version, but truncated or inconsistent.
    Malformed,
}

fn header(kind: u8, origin: u64, seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

/// Writes a chat record into `out` (cleared first).
pub fn encode_chat(origin: u64, seq: u64, from: &SocketAddr, payload: &[u8], out: &mut Vec<u8>) {
    header(KIND_CHAT, origin, seq, out);
    match from {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&v4.port().to_be_bytes());
        }
        SocketAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.port().to_be_bytes());
            out.extend_from_slice(&v6.flowinfo().to_be_bytes());
            out.extend_from_slice(&v6.scope_id().to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

pub fn encode_announce(origin: u64, last_seq: u64, clients: u32, period_ms: u32, out: &mut Vec<u8>) {
    header(KIND_ANNOUNCE, origin, last_seq, out);
    out.extend_from_slice(&clients.to_be_bytes());
    out.extend_from_slice(&period_ms.to_be_bytes());
}

pub fn encode_goodbye(origin: u64, last_seq: u64, out: &mut Vec<u8>) {
    header(KIND_GOODBYE, origin, last_seq, out);
}

/// The sequence number of an encoded record (any kind).
pub fn seq_of(record: &[u8]) -> u64 {
    record.get(SEQ_OFFSET..SEQ_OFFSET + 8).map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Writes the sequence number of an encoded record (any kind).
pub fn set_seq(record: &mut [u8], seq: u64) {
    record[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&seq.to_be_bytes());
}

/// A cursor over received bytes; every read fails as `Malformed` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record<'_>, WireError> {
    if bytes.len() < 5 || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(WireError::Foreign);
    }
    let mut reader = Reader(&bytes[5..]);
    let kind = reader.u8()?;
    let origin = u64::from_be_bytes(reader.array()?);
    let seq = u64::from_be_bytes(reader.array()?);
    match kind {
        KIND_CHAT => {
            let from = match reader.u8()? {
                4 => {
                    let ip = Ipv4Addr::from(reader.array::<4>()?);
                    SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes(reader.array()?))
                }
                6 => {
                    let ip = Ipv6Addr::from(reader.array::<16>()?);
                    let port = u16::from_be_bytes(reader.array()?);
                    let flowinfo = u32::from_be_bytes(reader.array()?);
                    let scope_id = u32::from_be_bytes(reader.array()?);
                    SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope_id))
                }
                _ => return Err(WireError::Malformed),
            };
            Ok(Record::Chat { origin, seq, from, payload: reader.0 })
        }
        KIND_ANNOUNCE => {
            let clients = u32::from_be_bytes(reader.array()?);
            let period_ms = u32::from_be_bytes(reader.array()?);
            if !reader.0.is_empty() || period_ms == 0 {
                return Err(WireError::Malformed);
            }
            Ok(Record::Announce { origin, seq, clients, period_ms })
        }
        KIND_GOODBYE if reader.0.is_empty() => Ok(Record::Goodbye { origin, seq }),
        _ => Err(WireError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_records_round_trip_for_both_families() {
        let mut out = Vec::new();
        for from in ["127.0.0.1:54321".parse().unwrap(), "[::1%3]:9".parse::<SocketAddr>().unwrap()] {
            for payload in [&b""[..], b"hello", &[0xff; 2000]] {
                encode_chat(7, 42, &from, payload, &mut out);
                assert_eq!(seq_of(&out), 42);
                set_seq(&mut out, 43);
                assert_eq!(decode(&out), Ok(Record::Chat { origin: 7, seq: 43, from, payload }));
                set_seq(&mut out, 42);
                assert_eq!(decode(&out), Ok(Record::Chat { origin: 7, seq: 42, from, payload }));
            }
        }
    }

    #[test]
    fn announce_and_goodbye_round_trip() {
        let mut out = Vec::new();
        encode_announce(u64::MAX, 9, 3, 1000, &mut out);
        assert_eq!(decode(&out), Ok(Record::Announce { origin: u64::MAX, seq: 9, clients: 3, period_ms: 1000 }));
        encode_goodbye(5, 11, &mut out);
        assert_eq!(decode(&out), Ok(Record::Goodbye { origin: 5, seq: 11 }));
    }

    #[test]
    fn foreign_and_malformed_bytes_are_told_apart() {
        assert_eq!(decode(b""), Err(WireError::Foreign));
        assert_eq!(decode(b"hello world"), Err(WireError::Foreign));
        assert_eq!(decode(b"CUDP\x02rest-of-a-newer-version"), Err(WireError::Foreign));
        let mut out = Vec::new();
        encode_chat(1, 1, &"10.0.0.1:5".parse().unwrap(), b"x", &mut out);
        for cut in 5..HEADER_LEN + 7 {
            assert_eq!(decode(&out[..cut]), Err(WireError::Malformed), "cut at {cut}");
        }
        let mut bad_family = out.clone();
        bad_family[HEADER_LEN] = 5;
        assert_eq!(decode(&bad_family), Err(WireError::Malformed));
        let mut bad_kind = out.clone();
        bad_kind[5] = 99;
        assert_eq!(decode(&bad_kind), Err(WireError::Malformed));
        encode_announce(1, 1, 1, 1000, &mut out);
        out.push(0);
        assert_eq!(decode(&out), Err(WireError::Malformed));
        encode_goodbye(1, 1, &mut out);
        out.push(0);
        assert_eq!(decode(&out), Err(WireError::Malformed));
    }
}
