//! The tutorial's wire format, built independently of chatudp's src/protocol.rs
//! (SPEC.md section 2): `Ack {repr(data.upper())}. from {ip}:{port}`.

use std::io::Write;
use std::net::SocketAddr;

/// `len` lowercase letters starting at letter `offset`, so that upper-casing shows and each
/// sender's payload differs.
pub fn letters(len: usize, offset: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i + offset) % 26) as u8).collect()
}

/// Python's `bytes.strip()`.
pub fn strip(d: &[u8]) -> &[u8] {
    let sp = |b: &u8| matches!(*b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = d.iter().position(|b| !sp(b)).unwrap_or(d.len());
    let end = d.iter().rposition(|b| !sp(b)).map_or(start, |i| i + 1);
    &d[start..end]
}

/// Python's `repr(data.upper())` for bytes.
pub fn upper_repr(data: &[u8], out: &mut Vec<u8>) {
    let quote = if data.contains(&b'\'') && !data.contains(&b'"') { b'"' } else { b'\'' };
    out.push(b'b');
    out.push(quote);
    for &b in data {
        let b = b.to_ascii_uppercase();
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ if b == quote => out.extend_from_slice(&[b'\\', quote]),
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push(quote);
}

pub fn write_ack(data: &[u8], from: &SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Ack ");
    upper_repr(data, out);
    let _ = write!(out, ". from {}:{}", from.ip(), from.port());
}

pub fn ack(data: &[u8], from: &SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4 + 48);
    write_ack(data, from, &mut out);
    out
}

/// The port an Ack names at its end, if it looks like one.
pub fn ack_port(d: &[u8]) -> Option<u16> {
    let colon = d.iter().rposition(|&b| b == b':')?;
    let digits = &d[colon + 1..];
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut v: u32 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    u16::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(d: &[u8]) -> String {
        let mut o = Vec::new();
        upper_repr(d, &mut o);
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn matches_python_repr() {
        assert_eq!(repr(b"hello"), "b'HELLO'");
        assert_eq!(repr(b""), "b''");
        assert_eq!(repr(b"it's"), "b\"IT'S\"");
        assert_eq!(repr(b"both ' and \""), "b'BOTH \\' AND \"'");
        assert_eq!(repr(b"a\\b\t\n\r\x00\x7f\xff"), "b'A\\\\B\\t\\n\\r\\x00\\x7f\\xff'");
    }

    #[test]
    fn ack_text() {
        let a: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(ack(b"hello", &a), b"Ack b'HELLO'. from 127.0.0.1:54321");
        assert_eq!(ack_port(b"Ack b'HELLO'. from 127.0.0.1:54321"), Some(54321));
        assert_eq!(ack_port(b"Bye!"), None);
        assert_eq!(letters(3, 25), b"zab");
    }
}
