//! Per-source sequence accounting, as RTP receivers count (RFC 3550 §6.4.1 and appendices
//! A.1 and A.3), for sequence numbers of 1, 2, 4 or 8 bytes.
//!
//! With `M` the size of the number space and `W` the reorder window (1024, or 64 for one-byte
//! numbers), a datagram whose number is `d = (seq - max) mod M` ahead of the highest one seen:
//! - `0 < d < M/2`: in order (a gap of `d - 1` is missing for now); the highest advances and
//!   wraps around `M` into the extended (64-bit) highest sequence;
//! - `d == 0`, or up to `W` behind and already seen: a duplicate;
//! - up to `W` behind and not seen yet: reordered, it fills a gap (no longer lost);
//! - anything else is a very large jump: A.1's `bad_seq` rule — if the next datagram follows it
//!   the source restarted and a new run begins at the jump; if not, the stray is only received.
//!
//! `lost = expected - unique` over each run (expected = extended highest - base + 1), summed
//! over runs; `received` counts every datagram, duplicates and late ones included.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Where a datagram carries its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqField {
    pub offset: usize,
    /// 1, 2, 4 or 8 bytes.
    pub size: usize,
    pub big_endian: bool,
}

impl SeqField {
    pub fn new(offset: usize, size: usize, big_endian: bool) -> Result<SeqField, String> {
        if ![1, 2, 4, 8].contains(&size) {
            return Err(format!("the sequence size must be 1, 2, 4 or 8 bytes, not {size}"));
        }
        if offset > crate::protocol::MAX_DATAGRAM {
            return Err(format!("the sequence offset must be 0..{}, not {offset}", crate::protocol::MAX_DATAGRAM));
        }
        Ok(SeqField { offset, size, big_endian })
    }

    /// The number in `payload`; `None` when the datagram is too short to hold it.
    pub fn read(&self, payload: &[u8]) -> Option<u64> {
        let bytes = payload.get(self.offset..self.offset + self.size)?;
        let mut buf = [0u8; 8];
        if self.big_endian {
            buf[8 - self.size..].copy_from_slice(bytes);
            Some(u64::from_be_bytes(buf))
        } else {
            buf[..self.size].copy_from_slice(bytes);
            Some(u64::from_le_bytes(buf))
        }
    }

    fn bits(&self) -> u32 {
        self.size as u32 * 8
    }
}

/// What `sources()` reports for one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
}

const WINDOW_WORDS: usize = 16;

/// The sequence state of one source.
#[derive(Debug, Clone)]
pub struct SourceSeq {
    max_seq: u64,
    /// Extended highest sequence of the current run, and its first.
    ext_max: u64,
    base: u64,
    /// Datagrams of the current run that were neither duplicates nor strays.
    unique: u64,
    lost_before: u64,
    bad_seq: Option<u64>,
    /// Bit `i` set: `ext_max - i` was seen.
    window: [u64; WINDOW_WORDS],
    counts: SourceCounts,
}

/// The number space of one [`SeqField`] size.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    mask: u64,
    half: u64,
    window: u64,
}

impl Space {
    pub fn new(field: &SeqField) -> Space {
        let bits = field.bits();
        let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
        let window = if bits == 8 { 64 } else { (WINDOW_WORDS * 64) as u64 };
        Space { mask, half: (mask >> 1) + 1, window }
    }
}

impl SourceSeq {
    pub fn new(seq: u64) -> SourceSeq {
        let mut state = SourceSeq {
            max_seq: seq,
            ext_max: 0,
            base: 0,
            unique: 0,
            lost_before: 0,
            bad_seq: None,
            window: [0; WINDOW_WORDS],
            counts: SourceCounts::default(),
        };
        state.start_run(seq, 1);
        state.unique = 1;
        state.counts.received = 1;
        state
    }

    /// A new run whose highest is `seq` and which starts `behind` numbers before it. Extended
    /// numbers are relative to the run and start high, so a late datagram never goes below zero.
    fn start_run(&mut self, seq: u64, behind: u64) {
        self.max_seq = seq;
        self.ext_max = 1u64 << 62;
        self.base = self.ext_max - (behind - 1);
        self.window = [0; WINDOW_WORDS];
        for i in 0..behind {
            self.mark(i);
        }
    }

    fn mark(&mut self, back: u64) {
        self.window[(back / 64) as usize] |= 1 << (back % 64);
    }

    fn seen(&self, back: u64) -> bool {
        self.window[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn shift(&mut self, by: u64) {
        if by >= (WINDOW_WORDS * 64) as u64 {
            self.window = [0; WINDOW_WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..WINDOW_WORDS).rev() {
            let low = if i >= words { self.window[i - words] } else { 0 };
            let lower = if i > words { self.window[i - words - 1] } else { 0 };
            self.window[i] = if bits == 0 { low } else { (low << bits) | (lower >> (64 - bits)) };
        }
    }

    pub fn update(&mut self, seq: u64, space: &Space) {
        self.counts.received += 1;
        let d = seq.wrapping_sub(self.max_seq) & space.mask;
        if d == 0 {
            self.counts.duplicates += 1;
        } else if d < space.half {
            self.ext_max += d;
            self.max_seq = seq;
            self.shift(d);
            self.mark(0);
            self.unique += 1;
        } else if space.mask - d + 1 < space.window {
            let back = space.mask - d + 1;
            if self.seen(back) {
                self.counts.duplicates += 1;
            } else {
                self.mark(back);
                self.base = self.base.min(self.ext_max - back);
                self.unique += 1;
                self.counts.reordered += 1;
            }
        } else if self.bad_seq == Some(seq) {
            // Two in a row after a very large jump: the source restarted (RFC 3550 A.1).
            self.lost_before += self.run_lost();
            self.start_run(seq, 2);
            self.unique = 2;
            self.bad_seq = None;
        } else {
            self.bad_seq = Some(seq.wrapping_add(1) & space.mask);
        }
    }

    fn run_lost(&self) -> u64 {
        (self.ext_max - self.base + 1).saturating_sub(self.unique)
    }

    pub fn counts(&self) -> SourceCounts {
        SourceCounts { lost: self.lost_before + self.run_lost(), ..self.counts }
    }
}

/// The per-source table, bounded: the least recently heard source is evicted when full.
pub struct SourceTable {
    capacity: usize,
    index: HashMap<SocketAddr, usize>,
    nodes: Vec<Node>,
    /// Most recently used first.
    head: usize,
    tail: usize,
    pub evictions: u64,
}

const NONE: usize = usize::MAX;

struct Node {
    addr: SocketAddr,
    state: Source,
    prev: usize,
    next: usize,
}

/// A source: its datagram count, and its sequence state once it sent a number.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub received: u64,
    pub seq: Option<SourceSeq>,
}

impl Source {
    pub fn counts(&self) -> SourceCounts {
        match &self.seq {
            Some(seq) => seq.counts(),
            None => SourceCounts { received: self.received, ..SourceCounts::default() },
        }
    }
}

impl SourceTable {
    pub fn new(capacity: usize) -> SourceTable {
        let capacity = capacity.max(1);
        SourceTable {
            capacity,
            index: HashMap::with_capacity(capacity.min(4096)),
            nodes: Vec::with_capacity(capacity.min(4096)),
            head: NONE,
            tail: NONE,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The source `addr`, created (evicting the least recent one when full) if new, and
    /// marked as the most recent.
    pub fn get(&mut self, addr: SocketAddr) -> &mut Source {
        let slot = match self.index.get(&addr) {
            Some(&slot) => {
                self.unlink(slot);
                slot
            }
            None if self.nodes.len() < self.capacity => {
                self.nodes.push(Node { addr, state: Source::default(), prev: NONE, next: NONE });
                self.index.insert(addr, self.nodes.len() - 1);
                self.nodes.len() - 1
            }
            None => {
                let slot = self.tail;
                self.unlink(slot);
                self.index.remove(&self.nodes[slot].addr);
                self.evictions += 1;
                self.nodes[slot].addr = addr;
                self.nodes[slot].state = Source::default();
                self.index.insert(addr, slot);
                slot
            }
        };
        self.push_front(slot);
        &mut self.nodes[slot].state
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.nodes[slot].prev, self.nodes[slot].next);
        if prev == NONE {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.nodes[slot].prev = NONE;
        self.nodes[slot].next = self.head;
        if self.head != NONE {
            self.nodes[self.head].prev = slot;
        }
        self.head = slot;
        if self.tail == NONE {
            self.tail = slot;
        }
    }

    pub fn snapshot(&self) -> Vec<(SocketAddr, SourceCounts)> {
        self.index.iter().map(|(addr, &slot)| (*addr, self.nodes[slot].state.counts())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(size: usize, seqs: &[u64]) -> SourceCounts {
        let field = SeqField::new(0, size, true).unwrap();
        let space = Space::new(&field);
        let mut state = SourceSeq::new(seqs[0]);
        for &s in &seqs[1..] {
            state.update(s, &space);
        }
        state.counts()
    }

    fn counts(received: u64, lost: u64, reordered: u64, duplicates: u64) -> SourceCounts {
        SourceCounts { received, lost, reordered, duplicates }
    }

    #[test]
    fn reads_each_size_and_byte_order() {
        let data = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(SeqField::new(1, 2, true).unwrap().read(&data), Some(0x0203));
        assert_eq!(SeqField::new(1, 2, false).unwrap().read(&data), Some(0x0302));
        assert_eq!(SeqField::new(0, 1, true).unwrap().read(&data), Some(1));
        assert_eq!(SeqField::new(1, 8, true).unwrap().read(&data), Some(0x0203040506070809));
        assert_eq!(SeqField::new(2, 8, true).unwrap().read(&data), None);
        assert!(SeqField::new(0, 3, true).is_err());
    }

    #[test]
    fn in_order_gaps_duplicates_and_late_ones() {
        assert_eq!(run(2, &[0, 1, 2, 3]), counts(4, 0, 0, 0));
        assert_eq!(run(2, &[0, 1, 4, 5]), counts(4, 2, 0, 0));
        assert_eq!(run(2, &[0, 1, 4, 2, 3]), counts(5, 0, 2, 0));
        assert_eq!(run(2, &[0, 1, 1, 2, 0]), counts(5, 0, 0, 2));
        // Late before the first one seen: the run starts earlier.
        assert_eq!(run(2, &[5, 3, 4]), counts(3, 0, 2, 0));
        assert_eq!(run(2, &[5, 3, 4, 3]), counts(4, 0, 2, 1));
    }

    #[test]
    fn wraps_around_each_size() {
        assert_eq!(run(1, &[254, 255, 0, 1]), counts(4, 0, 0, 0));
        assert_eq!(run(2, &[65534, 65535, 1, 0]), counts(4, 0, 1, 0));
        assert_eq!(run(4, &[u32::MAX as u64, 2]), counts(2, 2, 0, 0));
        assert_eq!(run(8, &[u64::MAX, 0, 1]), counts(3, 0, 0, 0));
        let long: Vec<u64> = (0..70_000u64).map(|i| i & 0xffff).collect();
        assert_eq!(run(2, &long), counts(70_000, 0, 0, 0));
    }

    #[test]
    fn a_restart_begins_a_new_run_and_a_stray_is_only_received() {
        // 100 sent, then the sensor reboots and counts from 0 again (4-byte numbers).
        let mut seqs: Vec<u64> = (1_000_000..1_000_100).collect();
        seqs.extend(0..10);
        assert_eq!(run(4, &seqs), counts(110, 0, 0, 0));
        // One corrupt number in the middle of a clean stream.
        assert_eq!(run(4, &[1, 2, 3, 3_000_000_000, 4, 5]), counts(6, 0, 0, 0));
    }

    #[test]
    fn the_table_is_a_bounded_lru() {
        let mut table = SourceTable::new(3);
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        for port in [1, 2, 3] {
            table.get(addr(port)).received += 1;
        }
        table.get(addr(1)).received += 1; // 2 is now the least recent
        table.get(addr(4)).received += 1;
        assert_eq!(table.len(), 3);
        assert_eq!(table.evictions, 1);
        let mut ports: Vec<(u16, u64)> = table.snapshot().iter().map(|(a, c)| (a.port(), c.received)).collect();
        ports.sort_unstable();
        assert_eq!(ports, vec![(1, 2), (3, 1), (4, 1)]);
        for port in 10..10_000 {
            table.get(addr(port));
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.evictions, 1 + 9_990);
    }
}
