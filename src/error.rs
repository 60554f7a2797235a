//! The core's one error type; the binding layer maps each variant to a Python exception.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum ChatError {
    /// A system call failed (bind, connect, send); becomes `OSError` in Python.
    Io(io::Error),
    /// An argument is out of range; becomes `ValueError`.
    InvalidArgument(String),
    /// A datagram longer than UDP allows; becomes `OSError(EMSGSIZE)`.
    TooLong { len: usize, max: usize },
    /// A message this endpoint cannot deliver, and why; becomes `OSError(EMSGSIZE)`.
    Undeliverable { len: usize, max: usize, why: &'static str },
    /// The object was stopped; becomes `chatudp.ClosedError`.
    Closed(&'static str),
    /// The socket thread died of a panic (a bug); becomes `RuntimeError`.
    Failed(String),
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::Io(e) => write!(f, "{e}"),
            ChatError::InvalidArgument(msg) => f.write_str(msg),
            ChatError::TooLong { len, max } => {
                write!(f, "a message of {len} bytes does not fit in one UDP datagram (at most {max} bytes); split it")
            }
            ChatError::Undeliverable { len, max, why } => {
                write!(f, "a message of {len} bytes cannot be delivered (at most {max} bytes here): {why}")
            }
            ChatError::Closed(what) => write!(f, "{what} is stopped; create a new one to talk again"),
            ChatError::Failed(why) => {
                write!(f, "the socket thread failed ({why}); stop this object and create a new one")
            }
        }
    }
}

impl std::error::Error for ChatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChatError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ChatError {
    fn from(e: io::Error) -> Self {
        ChatError::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, ChatError>;
