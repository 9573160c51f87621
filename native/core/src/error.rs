//! The one error type of the core. Its messages are the ones the Python reference gives for the same
//! mistake (the binding raises them as `ValueError`, the Python wrappers as `ConfigError` or
//! `CheckpointError`).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreError {
    /// A setting out of range (a window, a bound).
    Config(String),
    /// An argument that breaks a documented precondition (columns of unequal length, an index out of
    /// range, restored items that no valid state holds).
    Invalid(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Config(message) | CoreError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CoreError {}
