//! One config type per endpoint (server, client, services, peer), the defaults they start
//! from, and the one place their values are checked.
//!
//! Every check names the parameter and what it accepts, in one style:
//! `"{name} must be {accepted}, not {value}"`. The Python binding builds these configs when a
//! Python object is constructed, so a bad argument is refused there, never at `start()`.

use std::fmt::Display;

use crate::bus::BusConfig;
use crate::error::{ChatError, Result};
pub use crate::events::{Route, MAX_QUEUE};
use crate::limits::{Network, Rate};
use crate::net::SocketOptions;
pub use crate::protocol::{DEFAULT_BUFSIZE, MAX_DATAGRAM};

/// The tutorial's defaults: its chat server listens on 127.0.0.1:9999, clients heartbeat every
/// 10 seconds (`i64` for the port, as Python hands it over before it is checked).
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_CHAT_PORT: i64 = 9999;
pub const DEFAULT_INTERVAL: f64 = 10.0;
/// Events (or messages) that may wait for a consumer before new ones are dropped and counted.
pub const DEFAULT_QUEUE_SIZE: usize = 65_536;
/// Messages kept for the pull consumers (`recv_message`, iteration, `arecv`).
pub const DEFAULT_BACKLOG: usize = 1024;
/// Default bound of the clients table: far beyond any chat, small enough to bound memory.
pub const DEFAULT_MAX_CLIENTS: usize = 1 << 20;
/// Kernel buffer a server asks for by default (the kernel caps it at `net.core.rmem_max` /
/// `wmem_max`): a relay takes bursts from many clients at once, and every Ack fans out to all.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;
/// Datagrams read per system call.
pub const RECV_BATCH: usize = 32;
/// Shortest shared secret accepted: 128 bits.
pub const MIN_SECRET_LEN: usize = 16;
/// Request clients: seconds to wait for a reply before sending again, and how many times.
pub const DEFAULT_TIMEOUT: f64 = 2.0;
pub const DEFAULT_RETRIES: u32 = 2;

/// An integer parameter and the values it accepts.
#[derive(Debug, Clone, Copy)]
pub struct IntRange {
    pub name: &'static str,
    pub min: i64,
    pub max: i64,
    /// Said after the range, e.g. `" bytes"`.
    pub unit: &'static str,
}

impl IntRange {
    /// What the parameter accepts, e.g. `1-65507 bytes`.
    pub fn accepted(&self) -> String {
        format!("{}-{}{}", self.min, self.max, self.unit)
    }

    pub fn error(&self, shown: impl Display) -> ChatError {
        invalid(self.name, &self.accepted(), shown)
    }

    pub fn check(&self, value: i64) -> Result<i64> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(self.error(value))
        }
    }

    /// Checks a Rust-side `usize`, which may exceed `i64` in principle.
    pub fn check_usize(&self, value: usize) -> Result<usize> {
        match i64::try_from(value) {
            Ok(v) => self.check(v).map(|_| value),
            Err(_) => Err(self.error(value)),
        }
    }
}

/// A number-of-seconds parameter and the values it accepts.
#[derive(Debug, Clone, Copy)]
pub struct Seconds {
    pub name: &'static str,
    /// When false the minimum itself is refused (`interval` must be above 0).
    pub zero_allowed: bool,
    pub max: f64,
}

impl Seconds {
    pub fn accepted(&self) -> String {
        let low = if self.zero_allowed { ">= 0" } else { "> 0" };
        format!("a number of seconds {low} and <= {:e}", self.max)
    }

    pub fn error(&self, shown: impl Display) -> ChatError {
        invalid(self.name, &self.accepted(), shown)
    }

    pub fn check(&self, value: f64) -> Result<f64> {
        let low_ok = if self.zero_allowed { value >= 0.0 } else { value > 0.0 };
        if low_ok && value <= self.max {
            Ok(value)
        } else {
            Err(self.error(value))
        }
    }
}

/// The error every check returns: `"{name} must be {accepted}, not {shown}"`.
pub fn invalid(name: &str, accepted: &str, shown: impl Display) -> ChatError {
    ChatError::InvalidArgument(format!("{name} must be {accepted}, not {shown}"))
}

pub const PORT: IntRange = IntRange { name: "port", min: 0, max: 65_535, unit: "" };
pub const BUFSIZE: IntRange = IntRange { name: "bufsize", min: 1, max: MAX_DATAGRAM as i64, unit: " bytes" };
/// Beyond this a queue could not be honoured in memory.
pub const QUEUE_SIZE: IntRange = IntRange { name: "queue_size", min: 1, max: MAX_QUEUE as i64, unit: " events" };
pub const BACKLOG: IntRange = IntRange { name: "backlog", min: 1, max: MAX_QUEUE as i64, unit: " messages" };
pub const MAX_CLIENTS: IntRange = IntRange { name: "max_clients", min: 1, max: 1 << 30, unit: " clients" };
pub const RCVBUF: IntRange = IntRange { name: "rcvbuf", min: 1, max: i32::MAX as i64, unit: " bytes" };
pub const SNDBUF: IntRange = IntRange { name: "sndbuf", min: 1, max: i32::MAX as i64, unit: " bytes" };
/// Far more socket threads than any machine has cores, few enough to catch a typo.
pub const WORKERS: IntRange = IntRange { name: "workers", min: 1, max: 256, unit: " socket threads" };
pub const RETRIES: IntRange = IntRange { name: "retries", min: 0, max: 1_000_000, unit: "" };
pub const INTERVAL: Seconds = Seconds { name: "interval", zero_allowed: false, max: 1e9 };
pub const EXPIRY_GRACE: Seconds = Seconds { name: "expiry_grace", zero_allowed: true, max: 1e9 };
pub const TIMEOUT: Seconds = Seconds { name: "timeout", zero_allowed: true, max: 1e9 };

/// A shared secret: at least [`MIN_SECRET_LEN`] bytes.
pub fn check_secret(secret: &[u8]) -> Result<()> {
    if secret.len() >= MIN_SECRET_LEN {
        Ok(())
    } else {
        Err(invalid(
            "secret",
            &format!("at least {MIN_SECRET_LEN} bytes (use os.urandom(32))"),
            format!("{} bytes", secret.len()),
        ))
    }
}

fn check_socket(socket: &SocketOptions) -> Result<()> {
    if let Some(size) = socket.rcvbuf {
        RCVBUF.check_usize(size)?;
    }
    if let Some(size) = socket.sndbuf {
        SNDBUF.check_usize(size)?;
    }
    Ok(())
}

/// The group-chat server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Seconds a client may stay silent (the original `interval`).
    pub interval: f64,
    /// Extra seconds the expiry timer waits beyond `interval` before it removes a silent client,
    /// so that a heartbeat sent every `interval` seconds is not raced by the timer. The check the
    /// original makes when a chat message arrives still uses `interval` alone.
    pub expiry_grace: f64,
    /// Bytes read per datagram; longer datagrams are cut, as `recvfrom(bufsize)` cuts them.
    pub bufsize: usize,
    /// Events that may wait for the consumer before new ones are dropped (and counted).
    pub queue_size: usize,
    /// Messages kept for the pull consumers.
    pub backlog: usize,
    /// Which events are queued for the consumer, and whether messages are kept (up to
    /// `route.backlog`) for pull consumers; events nobody asked for are never built.
    pub route: Route,
    pub socket: SocketOptions,
    /// Remove a client as soon as the network reports its port unreachable, instead of sending
    /// to it until it expires as the original does.
    pub drop_unreachable: bool,
    /// New sources beyond this many are refused; live clients are never evicted.
    pub max_clients: usize,
    /// Per-source limit on chat messages; heartbeats are never limited.
    pub rate: Option<Rate>,
    /// When not empty, datagrams from other networks are dropped.
    pub allow: Vec<Network>,
    /// New sources must echo a cookie before they join (see `auth`).
    pub validate: bool,
    /// Shared secret: every datagram carries an authentication trailer (see `auth`).
    pub secret: Option<Vec<u8>>,
    /// Socket threads, each with its own `SO_REUSEPORT` socket on the one port (see
    /// `reuseport`); they share the clients table, the limits and the replay state.
    pub workers: usize,
    /// Relays on the same broker and room form one chat (see `bus`).
    pub bus: Option<BusConfig>,
}

impl ServerConfig {
    pub fn new(host: impl Into<String>, port: u16, interval: f64) -> ServerConfig {
        ServerConfig {
            host: host.into(),
            port,
            interval,
            expiry_grace: interval / 2.0,
            bufsize: DEFAULT_BUFSIZE,
            queue_size: DEFAULT_QUEUE_SIZE,
            backlog: DEFAULT_BACKLOG,
            route: Route::default(),
            socket: SocketOptions { rcvbuf: Some(DEFAULT_SOCKET_BUFFER), sndbuf: Some(DEFAULT_SOCKET_BUFFER) },
            drop_unreachable: true,
            max_clients: DEFAULT_MAX_CLIENTS,
            rate: None,
            allow: Vec::new(),
            validate: false,
            secret: None,
            workers: 1,
            bus: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(bus) = &self.bus {
            bus.validate()?;
        }
        INTERVAL.check(self.interval)?;
        EXPIRY_GRACE.check(self.expiry_grace)?;
        WORKERS.check_usize(self.workers)?;
        BUFSIZE.check_usize(self.bufsize)?;
        QUEUE_SIZE.check_usize(self.queue_size)?;
        BACKLOG.check_usize(self.backlog)?;
        MAX_CLIENTS.check_usize(self.max_clients)?;
        check_socket(&self.socket)?;
        self.secret.as_deref().map_or(Ok(()), check_secret)
    }
}

/// The group-chat client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    /// Seconds between heartbeats; the first is sent `interval` seconds after start, unless
    /// `announce` is set.
    pub interval: f64,
    /// Send the first heartbeat at once at start, so the client joins the server's table (and
    /// hears the others) without waiting `interval` seconds. Off by default: the tutorial's timing.
    pub announce: bool,
    /// Bytes read per datagram, as the original's `recvfrom(1024)`.
    pub bufsize: usize,
    pub queue_size: usize,
    /// Messages kept for the pull consumers.
    pub backlog: usize,
    /// Which events are queued and how many messages are kept for pull consumers.
    pub route: Route,
    pub socket: SocketOptions,
    /// Shared secret of the server's authenticated mode.
    pub secret: Option<Vec<u8>>,
}

impl ClientConfig {
    pub fn new(host: impl Into<String>, port: u16, interval: f64) -> ClientConfig {
        ClientConfig {
            host: host.into(),
            port,
            interval,
            announce: false,
            bufsize: DEFAULT_BUFSIZE,
            queue_size: DEFAULT_QUEUE_SIZE,
            backlog: DEFAULT_BACKLOG,
            route: Route::default(),
            socket: SocketOptions::default(),
            secret: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        INTERVAL.check(self.interval)?;
        BUFSIZE.check_usize(self.bufsize)?;
        QUEUE_SIZE.check_usize(self.queue_size)?;
        BACKLOG.check_usize(self.backlog)?;
        check_socket(&self.socket)?;
        self.secret.as_deref().map_or(Ok(()), check_secret)
    }
}

/// The echo and time servers.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub host: String,
    pub port: u16,
    /// Bytes read per datagram, as the seed's `recvfrom(1024)`; longer datagrams are cut.
    pub bufsize: usize,
    pub socket: SocketOptions,
    /// When set, every request is also queued as an event for a consumer (the seed's servers
    /// print each request), in a queue of this many events; when the consumer is behind,
    /// further events are dropped and counted, and the answers go on.
    pub events: Option<usize>,
    /// Reflection guard: a new source gets only a cookie challenge until it echoes it (see
    /// `auth::AddressGuard`). Off by default: the tutorial's clients cannot answer it.
    pub validate: bool,
}

impl ServiceConfig {
    pub fn new(host: impl Into<String>, port: u16) -> ServiceConfig {
        ServiceConfig {
            host: host.into(),
            port,
            bufsize: DEFAULT_BUFSIZE,
            // A burst waits in the kernel instead of being dropped there.
            socket: SocketOptions { rcvbuf: Some(DEFAULT_SOCKET_BUFFER), sndbuf: None },
            events: None,
            validate: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        BUFSIZE.check_usize(self.bufsize)?;
        if let Some(size) = self.events {
            QUEUE_SIZE.check_usize(size)?;
        }
        check_socket(&self.socket)
    }
}

/// The request/response socket of the echo and time clients and of the QQ programs.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub host: String,
    pub port: u16,
    /// Bytes read per datagram; longer datagrams are cut.
    pub bufsize: usize,
    pub socket: SocketOptions,
    /// Request clients: seconds to wait for each reply.
    pub timeout: f64,
    /// Request clients: resends after the first try.
    pub retries: u32,
}

impl PeerConfig {
    pub fn new(host: impl Into<String>, port: u16) -> PeerConfig {
        PeerConfig {
            host: host.into(),
            port,
            bufsize: DEFAULT_BUFSIZE,
            socket: SocketOptions::default(),
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
        }
    }

    pub fn validate(&self) -> Result<()> {
        BUFSIZE.check_usize(self.bufsize)?;
        TIMEOUT.check(self.timeout)?;
        RETRIES.check(i64::from(self.retries))?;
        check_socket(&self.socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(ChatError::InvalidArgument(text)) => text,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn every_check_names_the_parameter_and_the_range() {
        assert_eq!(message(PORT.check(70_000)), "port must be 0-65535, not 70000");
        assert_eq!(message(BUFSIZE.check(0)), "bufsize must be 1-65507 bytes, not 0");
        assert!(message(INTERVAL.check(0.0)).starts_with("interval must be a number of seconds > 0"));
        assert!(message(INTERVAL.check(f64::NAN)).ends_with("not NaN"));
        assert!(message(EXPIRY_GRACE.check(-1.0)).starts_with("expiry_grace must be a number of seconds >= 0"));
        assert!(message(check_secret(b"short")).starts_with("secret must be at least 16 bytes"));
        assert!(EXPIRY_GRACE.check(0.0).is_ok() && INTERVAL.check(1e9).is_ok() && INTERVAL.check(1e10).is_err());
    }

    #[test]
    fn configs_refuse_what_they_cannot_honour() {
        let mut server = ServerConfig::new("127.0.0.1", 0, 1.0);
        assert!(server.validate().is_ok());
        server.queue_size = 1 << 40;
        assert!(message(server.validate()).starts_with("queue_size"));
        let mut client = ClientConfig::new("127.0.0.1", 0, 1.0);
        client.socket.rcvbuf = Some(usize::MAX);
        assert!(message(client.validate()).starts_with("rcvbuf"));
        let mut service = ServiceConfig::new("127.0.0.1", 0);
        service.events = Some(0);
        assert!(message(service.validate()).starts_with("queue_size"));
        let mut peer = PeerConfig::new("127.0.0.1", 0);
        peer.timeout = -1.0;
        assert!(message(peer.validate()).starts_with("timeout"));
    }
}
