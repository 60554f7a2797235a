//! The Redis backend: the synchronous client on two threads of its own, one publishing (RESP2 does
//! not let a subscribed connection publish) and one subscribed to the room's channel.
//!
//! Each thread reconnects by itself with a capped backoff; `connected` is true while both are up.
//! Redis cuts a subscriber that falls too far behind (`client-output-buffer-limit pubsub`): that
//! is a disconnect like any other, counted, and the records in between show up as sequence gaps.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Client, Connection};

use super::{backoff, BusConfig, BusDrop, Shared, CONNECT_TIMEOUT};
use crate::error::{ChatError, Result};

/// How often a blocked read looks whether the bus is stopping.
const READ_SLICE: Duration = Duration::from_millis(100);
/// Records sent in one pipelined round trip at most.
const PIPELINE: usize = 256;
/// Longest one publish may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

pub(super) fn check_url(url: &str) -> Result<()> {
    if url.to_ascii_lowercase().starts_with("rediss://") {
        return Err(ChatError::InvalidArgument(
            "rediss:// (Redis over TLS) is not built into chatudp: reach Redis over a private network or a TLS \
             tunnel, or use NATS with tls://"
                .to_owned(),
        ));
    }
    Client::open(url)
        .map(drop)
        .map_err(|e| ChatError::InvalidArgument(format!("bus URL {url:?} is not a Redis address: {e}")))
}

/// Both halves' state, for `connected`.
struct Links {
    publisher: AtomicBool,
    subscriber: AtomicBool,
}

impl Links {
    fn set(&self, shared: &Shared, half: &AtomicBool, up: bool) {
        half.store(up, Relaxed);
        shared.set_connected(self.publisher.load(Relaxed) && self.subscriber.load(Relaxed));
    }
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    config: &BusConfig,
    outbound: Receiver<Vec<u8>>,
) -> Result<Vec<JoinHandle<()>>> {
    let client = Client::open(config.urls[0].as_str())
        .map_err(|e| ChatError::InvalidArgument(format!("bus URL is not a Redis address: {e}")))?;
    let channel = config.subject();
    let links = Arc::new(Links { publisher: AtomicBool::new(false), subscriber: AtomicBool::new(false) });
    let publisher = {
        let (shared, client, channel, links) =
            (Arc::clone(&shared), client.clone(), channel.clone(), Arc::clone(&links));
        std::thread::Builder::new()
            .name("chatudp-bus-redis-pub".to_owned())
            .spawn(move || publish_loop(&shared, &client, &channel, &outbound, &links))?
    };
    let subscriber = std::thread::Builder::new()
        .name("chatudp-bus-redis-sub".to_owned())
        .spawn(move || subscribe_loop(&shared, &client, &channel, &links))?;
    Ok(vec![publisher, subscriber])
}

fn connect(client: &Client) -> Option<Connection> {
    let connection = client.get_connection_with_timeout(CONNECT_TIMEOUT).ok()?;
    connection.set_write_timeout(Some(WRITE_TIMEOUT)).ok()?;
    connection.set_read_timeout(Some(WRITE_TIMEOUT)).ok()?;
    Some(connection)
}

fn publish(connection: &mut Connection, channel: &str, record: &[u8]) -> bool {
    redis::cmd("PUBLISH").arg(channel).arg(record).query::<i64>(connection).is_ok()
}

/// PUBLISH every record in one pipeline: one round trip for a whole burst.
fn publish_all(connection: &mut Connection, channel: &str, records: &[Vec<u8>]) -> bool {
    let mut pipe = redis::pipe();
    for record in records {
        pipe.cmd("PUBLISH").arg(channel).arg(record.as_slice());
    }
    pipe.query::<Vec<i64>>(connection).is_ok()
}

fn publish_loop(shared: &Shared, client: &Client, channel: &str, outbound: &Receiver<Vec<u8>>, links: &Links) {
    let mut connection: Option<Connection> = None;
    let mut attempts = 0;
    let mut next_attempt = Instant::now();
    let mut next_announce = Instant::now();
    let mut record = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(PIPELINE);
    loop {
        let now = Instant::now();
        if connection.is_none() && now >= next_attempt {
            connection = connect(client);
            if connection.is_some() {
                attempts = 0;
                links.set(shared, &links.publisher, true);
            } else {
                next_attempt = Instant::now() + backoff(attempts);
                attempts += 1;
            }
        }
        if now >= next_announce {
            next_announce = now + shared.announce_period();
            if let Some(con) = connection.as_mut() {
                shared.announcement(&mut record);
                if !publish(con, channel, &record) {
                    connection = None;
                    links.set(shared, &links.publisher, false);
                }
            }
        }
        let wake_at = if connection.is_none() { next_announce.min(next_attempt) } else { next_announce };
        match outbound.recv_timeout(wake_at.saturating_duration_since(Instant::now())) {
            Ok(first) => {
                // Whatever else is queued goes in the same round trip.
                batch.clear();
                batch.push(first);
                batch.extend(outbound.try_iter().take(PIPELINE - 1));
                for record in &batch {
                    shared.took(record);
                }
                let mut published = connection.as_mut().map(|con| publish_all(con, channel, &batch));
                if published == Some(false) {
                    // A connection that died while idle is only found out by a publish: one
                    // fresh connection and one retry keep the first records after a restart.
                    connection = connect(client);
                    published = Some(connection.as_mut().is_some_and(|con| publish_all(con, channel, &batch)));
                }
                let reason = match published {
                    Some(true) => None,
                    Some(false) => {
                        connection = None;
                        links.set(shared, &links.publisher, false);
                        Some(BusDrop::PublishError)
                    }
                    None => Some(BusDrop::Disconnected),
                };
                for _ in &batch {
                    match reason {
                        None => shared.count_published(),
                        Some(reason) => shared.count_drop(reason),
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The owner closed the queue: stop.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(con) = connection.as_mut() {
        shared.goodbye(&mut record);
        let _ = con.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = con.set_read_timeout(Some(Duration::from_millis(200)));
        publish(con, channel, &record);
    }
    links.set(shared, &links.publisher, false);
}

fn subscribe_loop(shared: &Shared, client: &Client, channel: &str, links: &Links) {
    let mut attempts = 0;
    while !shared.is_stopping() {
        let Some(mut connection) = connect(client) else {
            if shared.sleep_unless_stopped(backoff(attempts)) {
                break;
            }
            attempts += 1;
            continue;
        };
        attempts = 0;
        let mut pubsub = connection.as_pubsub();
        if pubsub.set_read_timeout(Some(READ_SLICE)).is_err() || pubsub.subscribe(channel).is_err() {
            continue;
        }
        links.set(shared, &links.subscriber, true);
        while !shared.is_stopping() {
            match pubsub.get_message() {
                Ok(message) => shared.on_message(message.get_payload_bytes()),
                Err(e) if e.is_timeout() => {}
                // Closed, reset, or cut by the server for being slow: connect again.
                Err(_) => break,
            }
        }
        links.set(shared, &links.subscriber, false);
    }
}
