//! [`Health`]: the green / amber / red / grey judgement shared by the event log (how bad an
//! entry is) and the editor's view model (how a row is doing). It lives in its own module, below
//! both, so the log never has to import the view; the `view` module re-exports it.

use serde::{Deserialize, Serialize};

/// How a row (or a log entry) is doing, for its colour and its symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// In sync / connected (green).
    Good,
    /// Working, but something is off (amber).
    Degraded,
    /// Not working (red).
    Lost,
    /// Switched off or waiting, nothing wrong (grey).
    Idle,
}

impl Health {
    /// A mark that says the same as the colour (ASCII: every font has it).
    pub fn symbol(self) -> &'static str {
        match self {
            Health::Good => "[+]",
            Health::Degraded => "[!]",
            Health::Lost => "[x]",
            Health::Idle => "[-]",
        }
    }

    /// The worse of two.
    pub fn worst(self, other: Health) -> Health {
        let rank = |h: Health| match h {
            Health::Idle => 0,
            Health::Good => 1,
            Health::Degraded => 2,
            Health::Lost => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}
