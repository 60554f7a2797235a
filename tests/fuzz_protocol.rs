//! Property tests (proptest) of the datagram handling: `protocol::strip`, `classify` and
//! `write_ack` never panic and agree with straightforward reference implementations of what the
//! tutorial's Python server does (`bytes.strip()`, `bytes.upper()`, `repr()` of bytes as CPython
//! writes it in Objects/bytesobject.c, and the host as CPython's socket module spells it, which is
//! `inet_ntop`); `relay::Relay::on_datagram` never panics and keeps the clients table exactly as
//! a reference model of the original's `clients` dict does.
//!
//! Bounded: proptest's default 256 cases per property (a tenth of that for the 64 KiB inputs),
//! more with `PROPTEST_CASES=N`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use _core::limits::Rate;
use _core::protocol::{self, Kind, MAX_DATAGRAM};
use _core::relay::{Outcome, Relay};
use proptest::prelude::*;

// -- reference implementations -------------------------------------------------------------------

/// `bytes.isspace()` for one byte (Py_ISSPACE): space, \t, \n, \v, \f, \r.
fn py_isspace(c: u8) -> bool {
    c == b' ' || (0x09..=0x0d).contains(&c)
}

/// `bytes.strip()` with no argument.
fn py_strip(data: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = data.to_vec();
    while v.first().is_some_and(|&c| py_isspace(c)) {
        v.remove(0);
    }
    while v.last().is_some_and(|&c| py_isspace(c)) {
        v.pop();
    }
    v
}

/// `bytes.upper()`: ASCII a-z only.
fn py_upper(data: &[u8]) -> Vec<u8> {
    data.iter().map(|&c| if c.is_ascii_lowercase() { c - 32 } else { c }).collect()
}

/// `repr(b)` for a bytes object, as PyBytes_Repr(op, smartquotes=1) writes it.
fn py_bytes_repr(data: &[u8]) -> String {
    let squote = data.contains(&b'\'');
    let dquote = data.contains(&b'"');
    let quote = if squote && !dquote { b'"' } else { b'\'' };
    let mut s = String::from("b");
    s.push(quote as char);
    for &c in data {
        if c == quote || c == b'\\' {
            s.push('\\');
            s.push(c as char);
        } else if c == b'\t' {
            s.push_str("\\t");
        } else if c == b'\n' {
            s.push_str("\\n");
        } else if c == b'\r' {
            s.push_str("\\r");
        } else if !(b' '..0x7f).contains(&c) {
            s.push_str(&format!("\\x{:02x}", c));
        } else {
            s.push(c as char);
        }
    }
    s.push(quote as char);
    s
}

extern "C" {
    // POSIX; the libc crate has no binding for it.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// The host as CPython's socket module returns it in `recvfrom`'s address tuple: it calls
/// `inet_ntop` (make_ipv4_addr / make_ipv6_addr in Modules/socketmodule.c).
fn python_host(addr: &SocketAddr) -> String {
    let mut buf = [0 as libc::c_char; 64];
    let ok = match addr {
        SocketAddr::V4(v4) => {
            let raw = v4.ip().octets();
            // SAFETY: `raw` is a 4-byte in_addr, `buf` is larger than INET_ADDRSTRLEN.
            unsafe { !inet_ntop(libc::AF_INET, raw.as_ptr().cast(), buf.as_mut_ptr(), 64).is_null() }
        }
        SocketAddr::V6(v6) => {
            let raw = v6.ip().octets();
            // SAFETY: `raw` is a 16-byte in6_addr, `buf` is larger than INET6_ADDRSTRLEN.
            unsafe { !inet_ntop(libc::AF_INET6, raw.as_ptr().cast(), buf.as_mut_ptr(), 64).is_null() }
        }
    };
    assert!(ok, "inet_ntop failed");
    // SAFETY: inet_ntop wrote a NUL-terminated string into `buf`.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap().to_owned()
}

/// `"Ack {}. from {}:{}".format(data.upper(), *raddr).encode()`.
fn python_ack(data: &[u8], from: &SocketAddr) -> Vec<u8> {
    format!("Ack {}. from {}:{}", py_bytes_repr(&py_upper(data)), python_host(from), from.port()).into_bytes()
}

// -- strategies ------------------------------------------------------------------------------------

/// Bytes that matter to strip, classify and repr, mixed with any byte.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(vec![
            b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c, 0x1c, 0x85, 0xa0, b'\'', b'"', b'\\', 0, 0x1f, 0x7f, 0x80,
            0xff, b'a', b'z', b'A', b'{', b'`', b'^', b'h', b'b', b'q', b'u', b'i', b't',
        ]),
    ]
}

fn small_datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(interesting_byte(), 0..64),
        prop::collection::vec(any::<u8>(), 0..1100),
        // Heartbeats and quits wrapped in whitespace (or almost).
        (
            prop::collection::vec(interesting_byte(), 0..4),
            prop::sample::select(vec![&b"^hb^"[..], b"quit", b"QUIT", b"^hb", b"quit!"]),
            prop::collection::vec(interesting_byte(), 0..4),
        )
            .prop_map(|(a, m, b)| [a, m.to_vec(), b].concat()),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let segment = prop_oneof![Just(0u16), Just(0xffffu16), any::<u16>()];
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (prop::array::uniform8(segment), any::<u16>(), any::<u32>())
            .prop_map(|(s, port, scope)| { SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(s), port, 0, scope)) }),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::from(ip).to_ipv6_mapped(),
            port,
            0,
            0
        ))),
    ]
}

// -- protocol --------------------------------------------------------------------------------------

/// proptest's defaults (256 cases, or `PROPTEST_CASES`), without writing regression files into
/// the source tree: a failure prints its minimal input, which belongs in a plain test.
fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

/// A tenth of that, for the 64 KiB inputs.
fn config_large() -> ProptestConfig {
    let base = config();
    ProptestConfig { cases: (base.cases / 10).max(8), ..base }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn strip_and_classify_agree_with_python(data in small_datagram()) {
        let stripped = protocol::strip(&data);
        prop_assert_eq!(stripped, &py_strip(&data)[..]);
        let expected = match &py_strip(&data)[..] {
            b"^hb^" => Kind::Heartbeat,
            b"quit" => Kind::Quit,
            _ => Kind::Chat,
        };
        prop_assert_eq!(protocol::classify(&data), expected);
    }

    #[test]
    fn ack_is_byte_identical_to_the_original(data in small_datagram(), from in socket_addr()) {
        let mut out = vec![1, 2, 3]; // write_ack clears what was there
        protocol::write_ack(&data, &from, &mut out);
        let expected = python_ack(&data, &from);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected));
        prop_assert_eq!(protocol::ack(&data, &from), expected);
    }
}

proptest! {
    #![proptest_config(config_large())]

    #[test]
    fn ack_of_large_datagrams_is_byte_identical(
        size in prop_oneof![0..=MAX_DATAGRAM, Just(MAX_DATAGRAM), Just(1024usize), Just(1025usize)],
        seed in any::<u64>(),
        port in any::<u16>(),
    ) {
        // A cheap deterministic filler (xorshift) so 64 KiB inputs do not go through the shrinker.
        let mut x = seed | 1;
        let data: Vec<u8> = (0..size).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
        let from = SocketAddr::from(([127, 0, 0, 1], port));
        prop_assert!(protocol::ack(&data, &from) == python_ack(&data, &from));
        prop_assert_eq!(protocol::classify(&data), Kind::Chat);
    }
}

#[test]
fn edge_cases_by_hand() {
    let from: SocketAddr = "127.0.0.1:54321".parse().unwrap();
    for data in [
        &b""[..],
        b"'",
        b"\"",
        b"'\"",
        b"\\",
        b"\x7f\x80\xff\x00",
        b" \t\n\r\x0b\x0c",
        "你好".as_bytes(),
        b"it's \"quoted\"",
    ] {
        assert_eq!(protocol::ack(data, &from), python_ack(data, &from), "{data:?}");
    }
    // The reference itself, against values printed by CPython 3.11:
    assert_eq!(py_bytes_repr(b"it's"), "b\"it's\"");
    assert_eq!(py_bytes_repr(b"'\""), "b'\\'\"'");
    assert_eq!(py_bytes_repr(b"\x0b\x7f\xe9"), "b'\\x0b\\x7f\\xe9'");
    let v6: SocketAddr = "[::ffff:1.2.3.4]:9".parse().unwrap();
    assert_eq!(python_host(&v6), "::ffff:1.2.3.4");
}

/// For an IPv6 source in the deprecated IPv4-compatible form `::a.b.c.d`, CPython's socket
/// module spells the host with `inet_ntop`, `::1.2.3.4`, and so must the Ack.
#[test]
fn ipv4_compatible_ipv6_host_is_spelled_as_python_does() {
    let from: SocketAddr = "[::102:304]:9".parse().unwrap();
    assert_eq!(python_host(&from), "::1.2.3.4");
    let ours = protocol::ack(b"x", &from);
    assert!(
        ours == python_ack(b"x", &from),
        "IPv4-compatible IPv6 host: chatudp wrote {:?}, the original writes {:?}",
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&python_ack(b"x", &from)),
    );
}

// -- relay -----------------------------------------------------------------------------------------

/// The original server's `clients` dict and its rules, plus the bound `max_clients` (a full table
/// first drops the clients past `interval`, then refuses the newcomer).
#[derive(Default)]
struct Model {
    clients: BTreeMap<SocketAddr, f64>,
}

impl Model {
    fn admit(
        &mut self,
        from: SocketAddr,
        now: f64,
        interval: f64,
        max: usize,
        expired: &mut BTreeSet<SocketAddr>,
    ) -> Option<bool> {
        if let Some(seen) = self.clients.get_mut(&from) {
            *seen = now;
            return Some(false);
        }
        if self.clients.len() >= max {
            let old: Vec<SocketAddr> =
                self.clients.iter().filter(|(_, &t)| now - t > interval).map(|(a, _)| *a).collect();
            for a in old {
                self.clients.remove(&a);
                expired.insert(a);
            }
            if self.clients.len() >= max {
                return None;
            }
        }
        self.clients.insert(from, now);
        Some(true)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Datagram { data: Vec<u8>, from: usize, dt: f64 },
    Sweep { dt: f64, max_age: f64 },
}

fn op() -> impl Strategy<Value = Op> {
    let data = prop_oneof![
        3 => Just(b"^hb^".to_vec()),
        1 => Just(b" ^hb^\r\n".to_vec()),
        2 => Just(b"quit".to_vec()),
        1 => Just(b"\tquit ".to_vec()),
        3 => prop::collection::vec(any::<u8>(), 0..16),
    ];
    // Mostly forward in time, sometimes a lot, sometimes backwards (the wall clock can step back).
    let dt = prop_oneof![8 => 0.0..3.0f64, 1 => 0.0..50.0f64, 1 => -5.0..0.0f64, 1 => Just(0.0)];
    prop_oneof![
        9 => (data, 0..10usize, dt.clone()).prop_map(|(data, from, dt)| Op::Datagram { data, from, dt }),
        1 => (dt, 0.0..20.0f64).prop_map(|(dt, max_age)| Op::Sweep { dt, max_age }),
    ]
}

fn source(index: usize) -> SocketAddr {
    if index % 3 == 2 {
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 40_000 + index as u16, 0, 0))
    } else {
        SocketAddr::from(([127, 0, 0, 1], 40_000 + index as u16))
    }
}

fn table(relay: &Relay) -> BTreeMap<SocketAddr, f64> {
    let mut out = BTreeMap::new();
    for (addr, seen) in relay.iter() {
        assert!(out.insert(*addr, seen).is_none(), "{addr} twice in the table");
    }
    assert_eq!(out.len(), relay.len());
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn relay_matches_the_original_table_rules(
        ops in prop::collection::vec(op(), 0..80),
        interval in prop_oneof![Just(10.0f64), 0.5..20.0f64],
        max_clients in prop_oneof![Just(usize::MAX), 1..6usize],
    ) {
        let mut relay = Relay::with_limits(interval, max_clients, None);
        let mut model = Model::default();
        let mut now = 1_700_000_000.0f64;
        let (mut recipients, mut expired) = (Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Datagram { data, from, dt } => {
                    now += dt;
                    let from = source(from);
                    recipients.clear();
                    expired.clear();
                    let outcome = relay.on_datagram(&data, from, now, &mut recipients, &mut expired);
                    let mut model_expired = BTreeSet::new();
                    let expected = match &py_strip(&data)[..] {
                        b"^hb^" => match model.admit(from, now, interval, max_clients, &mut model_expired) {
                            Some(joined) => Outcome::Heartbeat { joined },
                            None => Outcome::TableFull,
                        },
                        b"quit" => Outcome::Quit { left: model.clients.remove(&from).is_some() },
                        _ => match model.admit(from, now, interval, max_clients, &mut model_expired) {
                            None => Outcome::TableFull,
                            Some(joined) => {
                                let live: BTreeSet<SocketAddr> =
                                    model.clients.iter().filter(|(_, &t)| now - t <= interval).map(|(a, _)| *a).collect();
                                model.clients.retain(|a, _| live.contains(a) || !model_expired.insert(*a));
                                let got: BTreeSet<SocketAddr> = recipients.iter().copied().collect();
                                prop_assert_eq!(got.len(), recipients.len(), "a recipient twice");
                                prop_assert_eq!(&got, &live);
                                prop_assert!(live.contains(&from), "the sender always gets its own Ack");
                                Outcome::Chat { joined }
                            }
                        },
                    };
                    prop_assert_eq!(outcome, expected);
                    let got_expired: BTreeSet<SocketAddr> = expired.iter().copied().collect();
                    prop_assert_eq!(got_expired.len(), expired.len(), "expired twice");
                    prop_assert_eq!(got_expired, model_expired);
                }
                Op::Sweep { dt, max_age } => {
                    now += dt;
                    expired.clear();
                    let next = relay.sweep(now, max_age, &mut expired);
                    let gone: BTreeSet<SocketAddr> =
                        model.clients.iter().filter(|(_, &t)| now - t > max_age).map(|(a, _)| *a).collect();
                    model.clients.retain(|a, _| !gone.contains(a));
                    let expected_next = model.clients.values().copied().reduce(f64::min).map(|t| t + max_age);
                    prop_assert_eq!(expired.iter().copied().collect::<BTreeSet<_>>(), gone);
                    prop_assert_eq!(next, expected_next);
                }
            }
            prop_assert_eq!(table(&relay), model.clients.clone());
            prop_assert!(relay.len() <= max_clients);
        }
    }

    #[test]
    fn relay_with_a_rate_limit_never_panics_and_stays_consistent(
        ops in prop::collection::vec(op(), 0..80),
        per_second in 0.1..100.0f64,
        burst in 1.0..10.0f64,
        max_clients in 1..6usize,
    ) {
        let mut relay = Relay::with_limits(5.0, max_clients, Some(Rate::new(per_second, burst).unwrap()));
        let mut now = 1_700_000_000.0f64;
        let (mut recipients, mut expired) = (Vec::new(), Vec::new());
        for op in ops {
            if let Op::Datagram { data, from, dt } = op {
                now += dt;
                let from = source(from);
                let before = table(&relay);
                recipients.clear();
                expired.clear();
                let outcome = relay.on_datagram(&data, from, now, &mut recipients, &mut expired);
                let after = table(&relay);
                prop_assert!(after.len() <= max_clients);
                match outcome {
                    Outcome::Heartbeat { joined } | Outcome::Chat { joined } | Outcome::RateLimited { joined } => {
                        prop_assert_eq!(joined, !before.contains_key(&from));
                        // Over the rate or not, the source counts as alive.
                        prop_assert_eq!(after.get(&from), Some(&now));
                    }
                    Outcome::Quit { left } => {
                        prop_assert_eq!(left, before.contains_key(&from));
                        prop_assert!(!after.contains_key(&from));
                    }
                    Outcome::TableFull => {
                        prop_assert!(!before.contains_key(&from) && !after.contains_key(&from));
                        prop_assert_eq!(before.len(), max_clients);
                    }
                }
                if let Outcome::Chat { .. } = outcome {
                    prop_assert!(recipients.contains(&from));
                    prop_assert!(recipients.iter().all(|a| after.contains_key(a)));
                }
                prop_assert!(expired.iter().all(|a| !after.contains_key(a)));
            }
        }
    }
}
