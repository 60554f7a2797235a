//! Events handed from a socket thread to whoever consumes them, without ever blocking it.
//!
//! Two queues, both growing only with what they hold (their bounds are counts, nothing is
//! allocated up front):
//! - the dispatch queue, for a consumer that acts on each event (the Python dispatcher and its
//!   callbacks, or a Rust caller); beyond `queue_size` new events are dropped and counted;
//! - the backlog, the messages kept for pull consumers (`recv_message`, iteration, `arecv`); a
//!   ring of at most `backlog` messages that drops the oldest, counted.
//!
//! What goes where is a [`Route`] the owner may change at any time: an event nobody asked for is
//! never built (see [`EventSender::wants_messages`]) nor queued, so it costs the consumer nothing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{ChatError, Result};
use crate::stats::{Counters, DropReason};

/// The largest `queue_size` and `backlog`: bounds beyond it could not be honoured (memory runs
/// out long before), so they are refused at construction.
pub const MAX_QUEUE: usize = 1 << 24;

/// Why a client left the server's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It sent `quit`.
    Quit,
    /// It was silent for longer than the server allows.
    Expired,
    /// Its port was unreachable.
    Unreachable,
    /// The server's owner removed it from the table.
    Removed,
}

impl LeaveReason {
    pub fn name(self) -> &'static str {
        match self {
            LeaveReason::Quit => "quit",
            LeaveReason::Expired => "expired",
            LeaveReason::Unreachable => "unreachable",
            LeaveReason::Removed => "removed",
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

/// Which events reach which queue. The default sends every event to the dispatch queue and
/// keeps no backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub messages: bool,
    pub joins: bool,
    pub leaves: bool,
    pub rejects: bool,
    /// Messages kept for pull consumers; 0: none.
    pub backlog: usize,
}

impl Default for Route {
    fn default() -> Route {
        Route { messages: true, joins: true, leaves: true, rejects: true, backlog: 0 }
    }
}

/// `queue_size` and `backlog` as the constructors accept them.
pub fn validate_bound(name: &str, value: usize) -> Result<()> {
    if (1..=MAX_QUEUE).contains(&value) {
        Ok(())
    } else {
        Err(ChatError::InvalidArgument(format!("{name} must be between 1 and {MAX_QUEUE} (2**24), not {value}")))
    }
}

/// A message kept for pull consumers: the data and its sender.
pub type Kept = (Vec<u8>, SocketAddr);

/// What a pull consumer gets when it asks for a kept message.
#[derive(Debug, PartialEq, Eq)]
pub enum Pull {
    Message(Kept),
    /// Nothing within the time asked for.
    Empty,
    /// The socket thread is gone and every kept message was read.
    Closed,
}

/// What the dispatcher gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// Events (possibly none, after a timeout), and whether messages were kept while an
    /// asynchronous consumer was waiting for one.
    Events(Vec<Event>, bool),
    /// The socket thread is gone and the queue is empty.
    Closed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Event>,
    backlog: VecDeque<Kept>,
    /// An asynchronous consumer waits for the next kept message: tell the dispatcher.
    async_armed: bool,
    async_ready: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The dispatcher waits here.
    queued: Condvar,
    /// Pull consumers wait here.
    kept: Condvar,
    queue_size: usize,
    messages: AtomicBool,
    joins: AtomicBool,
    leaves: AtomicBool,
    rejects: AtomicBool,
    backlog: AtomicUsize,
    backlog_dropped: AtomicU64,
    /// Live senders (one per socket thread): the queues close when the last one is dropped.
    senders: AtomicUsize,
}

/// A socket thread's end (one clone per socket thread). Dropping the last one (every thread
/// ended) closes both queues.
pub struct EventSender {
    shared: Arc<Shared>,
}

/// The owner's end: the dispatcher's batches, the pull consumers' messages, the route.
pub struct EventReceiver {
    shared: Arc<Shared>,
}

/// The two ends of a new pair of queues.
pub fn channel(queue_size: usize, route: Route) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        queued: Condvar::new(),
        kept: Condvar::new(),
        queue_size: queue_size.max(1),
        messages: AtomicBool::new(route.messages),
        joins: AtomicBool::new(route.joins),
        leaves: AtomicBool::new(route.leaves),
        rejects: AtomicBool::new(route.rejects),
        backlog: AtomicUsize::new(route.backlog),
        backlog_dropped: AtomicU64::new(0),
        senders: AtomicUsize::new(1),
    });
    (EventSender { shared: Arc::clone(&shared) }, EventReceiver { shared })
}

/// Gives back the memory of a queue that was long and is short again.
fn shrink<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > 256 && queue.len() < queue.capacity() / 4 {
        queue.shrink_to(queue.len() * 2);
    }
}

impl Shared {
    fn wants(&self, event: &Event) -> bool {
        match event {
            Event::Message { .. } => self.messages.load(Relaxed),
            Event::Join(_) => self.joins.load(Relaxed),
            Event::Leave(..) => self.leaves.load(Relaxed),
            Event::Reject(..) => self.rejects.load(Relaxed),
        }
    }
}

impl EventSender {
    /// Whether a message event would reach anyone: when not, do not build it.
    pub fn wants_messages(&self) -> bool {
        self.shared.messages.load(Relaxed) || self.shared.backlog.load(Relaxed) > 0
    }

    /// Queues `event` where its route says, or drops it (counted) when the dispatcher is behind.
    pub fn emit(&self, event: Event, counters: &Counters) {
        self.emit_all(std::iter::once(event), counters);
    }

    /// Queues a whole batch under one lock, waking each consumer at most once.
    pub fn emit_all(&self, events: impl IntoIterator<Item = Event>, counters: &Counters) {
        let shared = &*self.shared;
        let backlog = shared.backlog.load(Relaxed);
        let mut state: Option<MutexGuard<'_, State>> = None;
        let (mut queued, mut kept, mut full) = (false, false, 0u64);
        for event in events {
            let dispatch = shared.wants(&event);
            let keep = backlog > 0 && matches!(event, Event::Message { .. });
            if !dispatch && !keep {
                continue;
            }
            let state = state.get_or_insert_with(|| shared.state.lock());
            match (dispatch, keep, event) {
                (true, true, Event::Message { data, from }) => {
                    keep_message(shared, state, backlog, (data.clone(), from));
                    kept = true;
                    queued |= dispatch_one(shared, state, Event::Message { data, from }, &mut full);
                }
                (false, true, Event::Message { data, from }) => {
                    keep_message(shared, state, backlog, (data, from));
                    kept = true;
                }
                (_, _, event) => queued |= dispatch_one(shared, state, event, &mut full),
            }
        }
        let Some(mut state) = state else { return };
        if kept && state.async_armed {
            state.async_armed = false;
            state.async_ready = true;
            queued = true;
        }
        drop(state);
        if full > 0 {
            counters.drop_many(DropReason::CallbackQueueFull, full);
        }
        if queued {
            shared.queued.notify_one();
        }
        if kept {
            shared.kept.notify_all();
        }
    }
}

fn dispatch_one(shared: &Shared, state: &mut State, event: Event, full: &mut u64) -> bool {
    if state.queue.len() >= shared.queue_size {
        *full += 1;
        false
    } else {
        state.queue.push_back(event);
        true
    }
}

fn keep_message(shared: &Shared, state: &mut State, backlog: usize, message: Kept) {
    while state.backlog.len() >= backlog {
        state.backlog.pop_front();
        shared.backlog_dropped.fetch_add(1, Relaxed);
    }
    state.backlog.push_back(message);
}

impl Clone for EventSender {
    fn clone(&self) -> EventSender {
        self.shared.senders.fetch_add(1, Relaxed);
        EventSender { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) != 1 {
            return;
        }
        self.shared.state.lock().closed = true;
        self.shared.queued.notify_all();
        self.shared.kept.notify_all();
    }
}

impl EventReceiver {
    /// Changes where the next events go. Turning the backlog off empties it.
    pub fn set_route(&self, route: Route) {
        let shared = &*self.shared;
        shared.messages.store(route.messages, Relaxed);
        shared.joins.store(route.joins, Relaxed);
        shared.leaves.store(route.leaves, Relaxed);
        shared.rejects.store(route.rejects, Relaxed);
        shared.backlog.store(route.backlog, Relaxed);
        let mut state = shared.state.lock();
        while state.backlog.len() > route.backlog {
            state.backlog.pop_front();
            shared.backlog_dropped.fetch_add(1, Relaxed);
        }
        shrink(&mut state.backlog);
    }

    pub fn route(&self) -> Route {
        let shared = &*self.shared;
        Route {
            messages: shared.messages.load(Relaxed),
            joins: shared.joins.load(Relaxed),
            leaves: shared.leaves.load(Relaxed),
            rejects: shared.rejects.load(Relaxed),
            backlog: shared.backlog.load(Relaxed),
        }
    }

    /// Messages the backlog dropped to make room for newer ones.
    pub fn backlog_dropped(&self) -> u64 {
        self.shared.backlog_dropped.load(Relaxed)
    }

    /// Up to `max` queued events, waiting at most `wait`. When the queue is empty it first
    /// lingers for `linger` without asking to be woken: under load the socket thread then
    /// never pays for waking the dispatcher, which takes many events at once.
    pub fn next_batch(&self, max: usize, linger: Duration, wait: Duration) -> Batch {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.queue.is_empty() && !state.async_ready && !state.closed && !linger.is_zero() {
            drop(state);
            std::thread::sleep(linger.min(wait));
            state = shared.state.lock();
        }
        let deadline = Instant::now() + wait;
        while state.queue.is_empty() && !state.async_ready && !state.closed {
            if shared.queued.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
        if state.queue.is_empty() && !state.async_ready && state.closed {
            return Batch::Closed;
        }
        let take = state.queue.len().min(max.max(1));
        let events: Vec<Event> = state.queue.drain(..take).collect();
        shrink(&mut state.queue);
        let ready = std::mem::take(&mut state.async_ready);
        Batch::Events(events, ready)
    }

    /// Every queued event, without waiting.
    pub fn take_queued(&self) -> Vec<Event> {
        let mut state = self.shared.state.lock();
        let events = state.queue.drain(..).collect();
        shrink(&mut state.queue);
        events
    }

    /// Empties the dispatch queue; returns how many events it held.
    pub fn clear(&self) -> usize {
        let mut state = self.shared.state.lock();
        let n = state.queue.len();
        state.queue = VecDeque::new();
        n
    }

    /// The oldest kept message, waiting at most `wait` for one.
    pub fn pull(&self, wait: Duration) -> Pull {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        let deadline = Instant::now() + wait;
        loop {
            if let Some(message) = state.backlog.pop_front() {
                shrink(&mut state.backlog);
                return Pull::Message(message);
            }
            if state.closed {
                return Pull::Closed;
            }
            if shared.kept.wait_until(&mut state, deadline).timed_out() && state.backlog.is_empty() {
                return if state.closed { Pull::Closed } else { Pull::Empty };
            }
        }
    }

    /// For an asynchronous consumer that found the backlog empty: asks that the dispatcher be
    /// told (`Batch::Events(_, true)`) when the next message is kept. `false` when there is no
    /// need to wait: a message is there already, or the socket thread is gone.
    pub fn arm_async(&self) -> bool {
        let mut state = self.shared.state.lock();
        if !state.backlog.is_empty() || state.closed {
            return false;
        }
        state.async_armed = true;
        true
    }

    /// The socket thread is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    fn message(port: u16) -> Event {
        Event::Message { data: vec![port as u8], from: addr(port) }
    }

    const NO_WAIT: Duration = Duration::ZERO;

    #[test]
    fn events_nobody_asked_for_are_not_queued() {
        let route = Route { messages: false, joins: false, leaves: true, rejects: false, backlog: 0 };
        let (sender, receiver) = channel(8, route);
        assert!(!sender.wants_messages());
        let counters = Counters::default();
        sender.emit_all([message(1), Event::Join(addr(1)), Event::Reject(addr(2), DropReason::NotAllowed)], &counters);
        assert_eq!(receiver.next_batch(10, NO_WAIT, NO_WAIT), Batch::Events(vec![], false));
        sender.emit(Event::Leave(addr(1), LeaveReason::Quit), &counters);
        assert_eq!(
            receiver.next_batch(10, NO_WAIT, NO_WAIT),
            Batch::Events(vec![Event::Leave(addr(1), LeaveReason::Quit)], false)
        );
    }

    #[test]
    fn the_backlog_keeps_the_newest_and_counts_the_rest() {
        let route = Route { messages: false, backlog: 3, ..Route::default() };
        let (sender, receiver) = channel(8, route);
        assert!(sender.wants_messages());
        sender.emit_all((1..=5).map(message), &Counters::default());
        assert_eq!(receiver.backlog_dropped(), 2);
        for port in 3..=5 {
            assert_eq!(receiver.pull(NO_WAIT), Pull::Message((vec![port as u8], addr(port))));
        }
        assert_eq!(receiver.pull(Duration::from_millis(10)), Pull::Empty);
        let second = sender.clone();
        drop(sender);
        assert_eq!(receiver.pull(Duration::from_millis(10)), Pull::Empty, "one sender is left");
        drop(second);
        assert_eq!(receiver.pull(Duration::from_secs(5)), Pull::Closed);
        assert_eq!(receiver.next_batch(10, NO_WAIT, Duration::from_secs(5)), Batch::Closed);
    }

    #[test]
    fn a_full_dispatch_queue_drops_and_counts() {
        let (sender, receiver) = channel(2, Route::default());
        let counters = Counters::default();
        sender.emit_all((1..=5).map(message), &counters);
        assert_eq!(counters.snapshot().dropped(DropReason::CallbackQueueFull), 3);
        assert_eq!(receiver.next_batch(10, NO_WAIT, NO_WAIT), Batch::Events(vec![message(1), message(2)], false));
    }

    #[test]
    fn memory_follows_what_is_queued_not_the_bound() {
        let (sender, receiver) = channel(MAX_QUEUE, Route::default());
        let counters = Counters::default();
        assert!(receiver.shared.state.lock().queue.capacity() < 16);
        sender.emit_all((0..10_000).map(|i| message(i as u16)), &counters);
        while let Batch::Events(events, _) = receiver.next_batch(1000, NO_WAIT, NO_WAIT) {
            if events.is_empty() {
                break;
            }
        }
        assert!(receiver.shared.state.lock().queue.capacity() <= 512);
    }

    #[test]
    fn an_armed_async_consumer_wakes_the_dispatcher_once() {
        let route = Route { messages: false, backlog: 10, ..Route::default() };
        let (sender, receiver) = channel(8, route);
        assert!(receiver.arm_async());
        sender.emit(message(1), &Counters::default());
        assert_eq!(receiver.next_batch(10, NO_WAIT, Duration::from_secs(5)), Batch::Events(vec![], true));
        assert!(!receiver.arm_async(), "a message is kept already");
        sender.emit(message(2), &Counters::default());
        assert_eq!(receiver.next_batch(10, NO_WAIT, NO_WAIT), Batch::Events(vec![], false));
    }

    #[test]
    fn bounds_beyond_the_maximum_are_refused() {
        assert!(validate_bound("queue_size", 1).is_ok());
        assert!(validate_bound("queue_size", MAX_QUEUE).is_ok());
        assert!(matches!(validate_bound("queue_size", 0), Err(ChatError::InvalidArgument(_))));
        assert!(
            matches!(validate_bound("backlog", MAX_QUEUE + 1), Err(ChatError::InvalidArgument(m)) if m.contains("backlog"))
        );
    }
}
