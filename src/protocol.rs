//! The tutorial's group-chat wire format, byte for byte.
//!
//! The original server is Python: it compares `data.strip()` with `b'^hb^'` and `b'quit'`,
//! and answers a chat message with `"Ack {}. from {}:{}".format(data.upper(), *raddr)`,
//! where `data.upper()` is a `bytes` object, so the text holds Python's `repr` of it.

use std::io::Write;
use std::net::SocketAddr;

/// The heartbeat a client sends every `interval` seconds.
pub const HEARTBEAT: &[u8] = b"^hb^";
/// What a client sends when it leaves.
pub const QUIT: &[u8] = b"quit";
/// What the server sends to every client in its table when it stops.
pub const BYE: &[u8] = b"Bye!";
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// The largest UDP payload over IPv6 (without jumbograms): the 40-byte header is not counted in
/// IPv6's 16-bit payload length as IPv4's 20 bytes are in its total length.
pub const MAX_DATAGRAM_V6: usize = 65_527;

/// The largest payload one datagram to `to` can carry (IPv4-mapped addresses travel as IPv4).
pub fn max_payload(to: &std::net::SocketAddr) -> usize {
    match to {
        std::net::SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => MAX_DATAGRAM_V6,
        _ => MAX_DATAGRAM,
    }
}
/// The tutorial's `recvfrom(1024)`.
pub const DEFAULT_BUFSIZE: usize = 1024;

/// What a received datagram means to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Heartbeat,
    Quit,
    Chat,
}

/// Python's `bytes.isspace()` for one byte: space, `\t`, `\n`, `\r`, `\x0b`, `\x0c`.
#[inline]
fn is_python_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Python's `bytes.strip()` with no argument.
pub fn strip(data: &[u8]) -> &[u8] {
    let start = data.iter().position(|&b| !is_python_space(b)).unwrap_or(data.len());
    let end = data.iter().rposition(|&b| !is_python_space(b)).map_or(start, |i| i + 1);
    &data[start..end]
}

/// Sorts a datagram the way the original receive loop does.
pub fn classify(data: &[u8]) -> Kind {
    match strip(data) {
        HEARTBEAT => Kind::Heartbeat,
        QUIT => Kind::Quit,
        _ => Kind::Chat,
    }
}

/// Appends Python's `repr(data.upper())` for a `bytes` object to `out`.
pub fn write_upper_bytes_repr(data: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let quote = if data.contains(&b'\'') && !data.contains(&b'"') { b'"' } else { b'\'' };
    out.reserve(data.len() + 3);
    out.push(b'b');
    out.push(quote);
    for &byte in data {
        let byte = byte.to_ascii_uppercase();
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ if byte == quote => out.extend_from_slice(&[b'\\', quote]),
            0x20..=0x7e => out.push(byte),
            _ => out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]),
        }
    }
    out.push(quote);
}

/// Appends `n` in decimal (the hot path avoids `core::fmt`).
fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `host` as Python's socket module spells the first item of an address tuple.
pub fn write_host(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            for (i, octet) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u16::from(octet));
            }
        }
        // glibc's inet_ntop (which CPython uses) writes the deprecated IPv4-compatible form
        // `::a.b.c.d`; Rust writes `::102:304`. Every other form is spelled alike.
        std::net::IpAddr::V6(v6) if v6.segments()[..6] == [0; 6] && v6.segments()[6] != 0 => {
            let [.., a, b, c, d] = v6.octets();
            let _ = write!(out, "::{a}.{b}.{c}.{d}");
        }
        ip => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Fills `out` with the Ack the original server sends for `data` received from `from`.
pub fn write_ack(data: &[u8], from: &SocketAddr, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"Ack ");
    write_upper_bytes_repr(data, out);
    out.extend_from_slice(b". from ");
    write_host(from, out);
    out.push(b':');
    push_decimal(out, from.port());
}

/// The Ack as a new vector; see [`write_ack`].
pub fn ack(data: &[u8], from: &SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 48);
    write_ack(data, from, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(data: &[u8]) -> String {
        let mut out = Vec::new();
        write_upper_bytes_repr(data, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strip_matches_python() {
        assert_eq!(strip(b"  ^hb^ \n"), b"^hb^");
        assert_eq!(strip(b"\x0b\x0cquit\r\t"), b"quit");
        assert_eq!(strip(b"   "), b"");
        assert_eq!(strip(b""), b"");
        // 0x1c-0x1f and 0x85/0xa0 are whitespace for str, not for bytes.
        assert_eq!(strip(b"\x1cquit\xa0"), b"\x1cquit\xa0");
    }

    #[test]
    fn classify_follows_strip() {
        assert_eq!(classify(b" ^hb^ "), Kind::Heartbeat);
        assert_eq!(classify(b"quit\n"), Kind::Quit);
        assert_eq!(classify(b"QUIT"), Kind::Chat);
        assert_eq!(classify(b"^hb^x"), Kind::Chat);
        assert_eq!(classify(b""), Kind::Chat);
    }

    #[test]
    fn repr_quotes_like_python() {
        assert_eq!(repr(b"hello"), "b'HELLO'");
        assert_eq!(repr(b""), "b''");
        assert_eq!(repr(b"it's"), "b\"IT'S\"");
        assert_eq!(repr(b"say \"hi\""), "b'SAY \"HI\"'");
        assert_eq!(repr(b"both ' and \""), "b'BOTH \\' AND \"'");
        assert_eq!(repr(b"a\\b"), "b'A\\\\B'");
    }

    #[test]
    fn repr_escapes_like_python() {
        assert_eq!(repr(b"\t\n\r\x00\x1f\x7f\x80\xff"), "b'\\t\\n\\r\\x00\\x1f\\x7f\\x80\\xff'");
        assert_eq!(repr("你".as_bytes()), "b'\\xe4\\xbd\\xa0'");
        // upper() leaves non-ASCII bytes alone, even ones that are letters in Latin-1.
        assert_eq!(repr(b"\xe9z"), "b'\\xe9Z'");
    }

    #[test]
    fn ack_names_the_sender() {
        let v4: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(ack(b"hello", &v4), b"Ack b'HELLO'. from 127.0.0.1:54321");
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(ack(b"x", &v6), b"Ack b'X'. from ::1:9");
        let compatible: SocketAddr = "[::1.2.3.4]:9".parse().unwrap();
        assert_eq!(ack(b"x", &compatible), b"Ack b'X'. from ::1.2.3.4:9");
        let mapped: SocketAddr = "[::ffff:1.2.3.4]:9".parse().unwrap();
        assert_eq!(ack(b"x", &mapped), b"Ack b'X'. from ::ffff:1.2.3.4:9");
    }
}
