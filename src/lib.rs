//! chatudp's core: the tutorial's UDP group chat (`ChatUdpServer` / `ChatUdpClient`), byte for
//! byte on the wire, with socket threads that batch their system calls and never touch Python.
//!
//! Plain Rust, tested with `cargo test`; the `python` feature adds the thin PyO3 layer in `py`.

pub mod auth;
pub mod bus;
pub mod client;
pub mod collector;
pub mod config;
pub mod error;
pub mod events;
pub mod limits;
pub mod net;
pub mod peer;
pub mod protocol;
pub mod relay;
pub mod reuseport;
pub mod server;
pub mod services;
pub mod stats;
pub mod worker;

#[cfg(feature = "python")]
mod py;

pub use client::{Client, ClientConfig};
pub use error::ChatError;
pub use events::{Event, LeaveReason};
pub use server::{Server, ServerConfig};
pub use stats::{DropReason, Stats};
pub use worker::Endpoint;
