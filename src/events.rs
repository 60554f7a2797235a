//! Events handed from a socket thread to whoever consumes them (the Python dispatcher, a pull
//! consumer or a Rust caller), through a bounded channel that never blocks the socket thread.

use std::net::SocketAddr;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::stats::{Counters, DropReason};

/// Why a client left the server's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It sent `quit`.
    Quit,
    /// It was silent for longer than the server allows.
    Expired,
    /// Its port was unreachable.
    Unreachable,
}

impl LeaveReason {
    pub fn name(self) -> &'static str {
        match self {
            LeaveReason::Quit => "quit",
            LeaveReason::Expired => "expired",
            LeaveReason::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A chat message (never a heartbeat or `quit`), as received (cut to `bufsize`).
    Message { data: Vec<u8>, from: SocketAddr },
    /// A source entered the server's table.
    Join(SocketAddr),
    /// A source left the server's table.
    Leave(SocketAddr, LeaveReason),
    /// A datagram was refused: a new source while the table was full, or a source outside
    /// the `allow` list.
    Reject(SocketAddr, DropReason),
}

/// The socket thread's end of the event channel (one clone per socket thread).
#[derive(Clone)]
pub struct EventSender {
    sender: Sender<Event>,
}

impl EventSender {
    /// Queues `event`, or counts it as dropped when the consumer is behind.
    pub fn emit(&self, event: Event, counters: &Counters) {
        match self.sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => counters.drop_one(DropReason::CallbackQueueFull),
            // Nobody listens any more: the owner is being dropped.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

pub fn channel(capacity: usize) -> (EventSender, Receiver<Event>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity.max(1));
    (EventSender { sender }, receiver)
}
