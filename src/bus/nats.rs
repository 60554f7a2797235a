//! The NATS backend: async-nats on a current-thread tokio runtime in one thread of its own.
//!
//! async-nats does the reconnecting (to any server of the cluster, the listed ones and those the
//! cluster announces) with our capped backoff; its events keep `connected` current. A slow
//! consumer report, or the server cutting us for being slow, is counted and handled like any
//! disconnect: the records in between are lost and show up as sequence gaps at the receivers.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{backoff, BusConfig, BusDrop, Shared, CONNECT_TIMEOUT};
use crate::error::{ChatError, Result};

/// Longest one publish may wait for room in the client's own buffer before it is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest the goodbye may take to reach the broker at `stop()`.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(200);
/// Messages the client keeps for our subscription before it reports a slow consumer.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

pub(super) fn check_urls(urls: &[String]) -> Result<()> {
    for url in urls {
        url.parse::<ServerAddr>()
            .map_err(|e| ChatError::InvalidArgument(format!("bus URL {url:?} is not a NATS server address: {e}")))?;
    }
    Ok(())
}

/// Credentials written in the first URL that has some: `nats://user:password@host` or
/// `nats://token@host`, as the NATS tools read them.
fn with_credentials(options: ConnectOptions, urls: &[String]) -> ConnectOptions {
    for url in urls {
        let Ok(addr) = url.parse::<ServerAddr>() else { continue };
        match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => {
                return options.user_and_password(user.to_owned(), password.to_owned());
            }
            (Some(token), None) => return options.token(token.to_owned()),
            _ => {}
        }
    }
    options
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    config: &BusConfig,
    outbound: mpsc::Receiver<Vec<u8>>,
) -> Result<Vec<JoinHandle<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let urls = config.urls.clone();
    let subject = config.subject();
    let thread = std::thread::Builder::new().name("chatudp-bus-nats".to_owned()).spawn(move || {
        runtime.block_on(run(Arc::clone(&shared), urls, subject, outbound));
        // Whatever async-nats still runs (a reconnect in progress) is cut short here.
        runtime.shutdown_timeout(Duration::from_millis(100));
    })?;
    Ok(vec![thread])
}

async fn run(shared: Arc<Shared>, urls: Vec<String>, subject: String, mut outbound: mpsc::Receiver<Vec<u8>>) {
    let events = Arc::clone(&shared);
    let options = ConnectOptions::new()
        .name(format!("chatudp relay {:016x}", shared.id()))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(backoff)
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(Duration::from_secs(2))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        // Our own records are ignored anyway; not receiving them saves the broker the copy.
        .no_echo()
        .event_callback(move |event| {
            let shared = Arc::clone(&events);
            async move {
                match event {
                    Event::Connected => shared.set_connected(true),
                    Event::Disconnected | Event::Closed => shared.set_connected(false),
                    Event::SlowConsumer(_) => shared.count_slow_consumer(),
                    // A server error such as "Slow Consumer" is followed by a disconnect.
                    Event::ServerError(_) | Event::ClientError(_) | Event::LameDuckMode | Event::Draining => {}
                }
            }
        });
    let options = with_credentials(options, &urls);
    let client = match options.connect(urls).await {
        Ok(client) => client,
        // Only a bad address can fail here (checked at construction): nothing to connect to.
        Err(_) => return drain_until_stopped(&shared, &mut outbound).await,
    };
    let mut subscription = client.subscribe(subject.clone()).await.ok();
    let mut announce = tokio::time::interval(shared.announce_period());
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut record = Vec::new();
    loop {
        tokio::select! {
            biased;
            next = outbound.recv() => {
                let Some(next) = next else { break };
                shared.took(&next);
                publish(&shared, &client, &subject, next).await;
            }
            message = async { subscription.as_mut().expect("guarded below").next().await }, if subscription.is_some() => {
                match message {
                    Some(message) => shared.on_message(&message.payload),
                    // The client closed the subscription: take a new one.
                    None => subscription = client.subscribe(subject.clone()).await.ok(),
                }
            }
            _ = announce.tick() => {
                if subscription.is_none() {
                    subscription = client.subscribe(subject.clone()).await.ok();
                }
                if shared.is_connected() {
                    shared.announcement(&mut record);
                    let _ = tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(subject.clone(), record.clone().into())).await;
                }
            }
        }
        if shared.is_stopping() {
            break;
        }
    }
    if shared.is_connected() {
        shared.goodbye(&mut record);
        let goodbye = async {
            let _ = client.publish(subject.clone(), record.clone().into()).await;
            let _ = client.flush().await;
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    }
}

async fn publish(shared: &Shared, client: &async_nats::Client, subject: &str, record: Vec<u8>) {
    if !shared.is_connected() {
        shared.count_drop(BusDrop::Disconnected);
        return;
    }
    match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(subject.to_owned(), record.into())).await {
        Ok(Ok(())) => shared.count_published(),
        _ => shared.count_drop(BusDrop::PublishError),
    }
}

/// Without a client, takes records off the queue (dropping and counting them) until `stop()`.
async fn drain_until_stopped(shared: &Shared, outbound: &mut mpsc::Receiver<Vec<u8>>) {
    while let Some(record) = outbound.recv().await {
        shared.took(&record);
        shared.count_drop(BusDrop::Disconnected);
    }
}
