//! Holding the apply at a source position, so that validation can read the target at exactly
//! the point a source snapshot shows.
//!
//! A [`Hold`] asks the apply loop to stop *before* the first source transaction whose commit
//! is at or after `until`, once every transaction committed before `until` is on the target
//! (committed, so visible to a new snapshot). The loop then reports the position it holds at
//! and waits, never longer than [`HOLD_MAX`], for the requester to either release it or hand
//! it the next hold. The validation uses two holds: "stop now" (so the apply cannot run past
//! the consistent point of the source snapshot taken next), then "run on to that point".

use std::time::Duration;

use tokio::sync::oneshot;

use crate::pg::Lsn;

/// The apply never waits longer than this for the requester (a crashed validation cannot
/// stop replication).
pub const HOLD_MAX: Duration = Duration::from_secs(60);

/// The request, as the apply loop sees it.
#[derive(Debug)]
pub struct Hold {
    pub until: Lsn,
    reached: oneshot::Sender<Lsn>,
    next: oneshot::Receiver<Option<Hold>>,
}

/// The requester's side of a [`Hold`].
#[derive(Debug)]
pub struct HoldHandle {
    reached: oneshot::Receiver<Lsn>,
    next: oneshot::Sender<Option<Hold>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("the change stream did not reach {until} within {secs} s")]
    Timeout { until: Lsn, secs: u64 },
    #[error("the change stream stopped before reaching {until}")]
    Gone { until: Lsn },
}

impl HoldError {
    pub fn hint(&self) -> String {
        "the change stream must be running (stage cdc in /status); check its lag and errors, \
         then try again"
            .into()
    }
}

/// A new request and its handle.
pub fn request(until: Lsn) -> (Hold, HoldHandle) {
    let (reached_tx, reached_rx) = oneshot::channel();
    let (next_tx, next_rx) = oneshot::channel();
    (
        Hold {
            until,
            reached: reached_tx,
            next: next_rx,
        },
        HoldHandle {
            reached: reached_rx,
            next: next_tx,
        },
    )
}

impl HoldHandle {
    /// Wait until the apply holds; returns the source position everything before which is
    /// on the target.
    pub async fn reached(&mut self, until: Lsn, limit: Duration) -> Result<Lsn, HoldError> {
        match tokio::time::timeout(limit, &mut self.reached).await {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(_)) => Err(HoldError::Gone { until }),
            Err(_) => Err(HoldError::Timeout {
                until,
                secs: limit.as_secs(),
            }),
        }
    }

    /// Let the apply run on to `until` and hold there.
    pub fn then_hold_at(self, until: Lsn) -> HoldHandle {
        let (hold, handle) = request(until);
        let _ = self.next.send(Some(hold));
        handle
    }

    /// Let the apply go on (dropping the handle does the same).
    pub fn release(self) {
        let _ = self.next.send(None);
    }
}

impl Hold {
    /// Called by the apply loop where it holds (`applied`: its position): tell the requester
    /// and wait for what comes next.
    pub async fn wait(self, applied: Lsn) -> Option<Hold> {
        if self.reached.send(applied).is_err() {
            return None; // the requester went away
        }
        tracing::info!(at = %applied, "apply held for validation");
        let next = match tokio::time::timeout(HOLD_MAX, self.next).await {
            Ok(Ok(next)) => next,
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::warn!(
                    secs = HOLD_MAX.as_secs(),
                    "validation held the apply too long; going on"
                );
                None
            }
        };
        if next.is_none() {
            tracing::info!("apply released");
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hold_then_next_then_release() {
        let (hold, mut handle) = request(Lsn(0));
        let looped = tokio::spawn(async move {
            let mut positions = vec![];
            let mut h = Some(hold);
            let mut at = Lsn(10);
            while let Some(hold) = h.take() {
                positions.push(hold.until);
                h = hold.wait(at).await;
                at = Lsn(at.0 + 10);
            }
            positions
        });
        assert_eq!(handle.reached(Lsn(0), HOLD_MAX).await.unwrap(), Lsn(10));
        let mut handle = handle.then_hold_at(Lsn(15));
        assert_eq!(handle.reached(Lsn(15), HOLD_MAX).await.unwrap(), Lsn(20));
        handle.release();
        assert_eq!(looped.await.unwrap(), vec![Lsn(0), Lsn(15)]);
    }

    #[tokio::test]
    async fn a_vanished_loop_is_an_error_not_a_hang() {
        let (hold, mut handle) = request(Lsn(5));
        drop(hold);
        let e = handle.reached(Lsn(5), HOLD_MAX).await.unwrap_err();
        assert!(matches!(e, HoldError::Gone { .. }), "{e}");
    }
}
