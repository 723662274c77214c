//! The 128-bit sliding replay window of the peer datagram framing (digest 2, §8.5, in the
//! style of RFC 6479 / IPsec): which sequence numbers of one (peer, epoch) have been opened.
//! [`super::frame::Opener`] checks a number before verifying the tag and records it only after,
//! so forged datagrams cannot move the window.

use thiserror::Error;

/// Sequence numbers the window remembers at and below the highest one.
pub const REPLAY_WINDOW: u64 = 128;

/// Why a sequence number is not new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReplayError {
    /// Already accepted.
    #[error("replayed sequence number")]
    Replayed,
    /// [`REPLAY_WINDOW`] or more behind the highest accepted: cannot tell, so refused.
    #[error("sequence number too old for the replay window")]
    TooOld,
}

/// The 128-bit sliding replay window: the highest sequence number opened and which of the
/// [`REPLAY_WINDOW`] numbers at and below it have been.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The highest sequence number accepted, if any.
    top: Option<u64>,
    /// Bit `i` set: `top - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    /// The highest sequence number accepted so far.
    pub fn top(&self) -> Option<u64> {
        self.top
    }

    /// Would `seq` be new? Does not change the window.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        let Some(top) = self.top else {
            return Ok(());
        };
        if seq > top {
            return Ok(());
        }
        let behind = top - seq;
        if behind >= REPLAY_WINDOW {
            Err(ReplayError::TooOld)
        } else if self.seen & (1 << behind) != 0 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `seq` (which [`ReplayWindow::check`] accepted) as opened.
    pub fn accept(&mut self, seq: u64) {
        match self.top {
            Some(top) if seq <= top => {
                let behind = top - seq;
                if behind < REPLAY_WINDOW {
                    self.seen |= 1 << behind;
                }
            }
            Some(top) => {
                let ahead = seq - top;
                self.seen = if ahead >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << ahead
                };
                self.seen |= 1;
                self.top = Some(seq);
            }
            None => {
                self.seen = 1;
                self.top = Some(seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_each_number_once_and_forgets_after_128() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.top(), None);
        assert_eq!(w.check(5), Ok(()));
        w.accept(5);
        assert_eq!(w.check(5), Err(ReplayError::Replayed));
        // Below the first number but within the window: still new.
        assert_eq!(w.check(0), Ok(()));
        w.accept(0);
        assert_eq!(w.check(0), Err(ReplayError::Replayed));
        w.accept(300);
        assert_eq!(w.top(), Some(300));
        // 127 behind is the oldest remembered; 128 behind is too old.
        assert_eq!(w.check(173), Ok(()));
        w.accept(173);
        assert_eq!(w.check(173), Err(ReplayError::Replayed));
        assert_eq!(w.check(172), Err(ReplayError::TooOld));
        assert_eq!(w.check(5), Err(ReplayError::TooOld));
        // Sliding by less than the window keeps the bits.
        w.accept(301);
        assert_eq!(w.check(300), Err(ReplayError::Replayed));
        assert_eq!(w.check(299), Ok(()));
        // 173 slid out of the window: now too old rather than replayed.
        assert_eq!(w.check(173), Err(ReplayError::TooOld));
        assert_eq!(w.check(174), Ok(()));
    }

    #[test]
    fn window_survives_the_top_of_the_sequence_space() {
        let mut w = ReplayWindow::default();
        w.accept(u64::MAX - 1);
        w.accept(u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Replayed));
        assert_eq!(w.check(u64::MAX - 1), Err(ReplayError::Replayed));
        assert_eq!(w.check(u64::MAX - 2), Ok(()));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
    }
}
