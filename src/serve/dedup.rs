//! Event ids this process is handling or has handled recently. A copy of an event (published or
//! delivered again with the same id) that arrives within the window after the first was handled
//! is acknowledged without being routed a second time. A copy that arrives while the first is
//! still in flight waits for the first to be done, then is judged: if the first could not be
//! handled its id is released and the copy is handled then. Waiting in the process, rather than
//! going back to the queue, matters after a lost connection: the broker redelivers at once every
//! event the old connection held, while their handlers are still delivering, and a copy sent
//! back again and again would reach the queue's delivery limit and be dead-lettered.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::event::EventId;

/// Most handled ids remembered, whatever the window, so memory stays bounded. The ledger is
/// the dedup of record (docs/ledger.md): a copy of an event handled before the last 16,000 is
/// found there, recorded as a duplicate and acknowledged all the same, at the cost of one
/// lookup. This cache saves that lookup for recent copies and makes a copy of an event still
/// in flight wait for it.
const CAPACITY: usize = 16_000;

/// What [`Recent::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Handle it.
    Claimed,
    /// A copy was handled within the window: acknowledge without routing.
    Handled,
    /// A copy is being handled now: put this one back until that is done.
    InFlight,
}

/// Ids are kept as 128 bits drawn from two independently keyed hashes (two different ids
/// agree by chance about once in 2^128 pairs) and times as whole seconds since the cache
/// began, so the cache takes a fixed 2 MiB or so, allocated once, rather than a copy of each
/// id twice over in collections that double as they grow.
pub struct Recent {
    window: Duration,
    /// When second 0 was.
    start: Instant,
    hashers: (RandomState, RandomState),
    inner: Mutex<Inner>,
    /// Woken whenever a handling ends, for copies waiting on one in flight.
    finished: tokio::sync::Notify,
}

/// Two 64-bit words rather than a `u128`, for 8-byte alignment: 24 bytes an entry.
type Key = [u64; 2];

#[derive(Default)]
struct Inner {
    /// Id -> the second it was handled; `None` while in flight.
    ids: HashMap<Key, Option<u32>>,
    order: VecDeque<(u32, Key)>,
}

impl Recent {
    pub fn new(window: Duration) -> Recent {
        let inner = if window.is_zero() {
            Inner::default()
        } else {
            Inner {
                // Room for every remembered id and as many in flight as any prefetch allows,
                // twice over: a table at most half full is tidied of removed entries in place,
                // never reallocated at twice the size.
                ids: HashMap::with_capacity(2 * (CAPACITY + 10_000)),
                order: VecDeque::with_capacity(CAPACITY + 1),
            }
        };
        Recent {
            window,
            start: Instant::now(),
            hashers: (RandomState::new(), RandomState::new()),
            inner: Mutex::new(inner),
            finished: tokio::sync::Notify::new(),
        }
    }

    fn key(&self, id: &EventId) -> Key {
        let (a, b) = &self.hashers;
        // The whole id, publisher included: two publishers' events with one message_id are
        // two events.
        [a.hash_one(id), b.hash_one(id)]
    }

    /// Whole seconds since the cache began (an `Instant` before that counts as 0).
    fn second(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.start).as_secs()).unwrap_or(u32::MAX)
    }

    /// Whether the window has passed between two seconds (a window under a second still
    /// counts whole seconds).
    fn within(&self, then: u32, now: u32) -> bool {
        u64::from(now.saturating_sub(then)) < self.window.as_secs().max(1)
    }

    /// Takes `id` for handling, unless a copy is in flight or was handled within the window.
    pub fn claim(&self, id: &EventId, now: Instant) -> Claim {
        let key = self.key(id);
        let now = self.second(now);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.ids.get(&key) {
            Some(None) => Claim::InFlight,
            Some(Some(at)) if self.within(*at, now) => Claim::Handled,
            _ => {
                inner.ids.insert(key, None);
                Claim::Claimed
            }
        }
    }

    /// [`Recent::claim`], but a copy of an event in flight waits (up to `wait`) for that
    /// handling to end and is then judged again; `InFlight` only when the wait ran out.
    pub async fn claim_waiting(&self, id: &EventId, wait: Duration) -> Claim {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so an end between the look and the wait is not missed.
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.claim(id, Instant::now()) {
                Claim::InFlight => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Claim::InFlight;
            }
        }
    }

    /// Ends the handling of a claimed id: remembered if it was handled, released if not.
    pub fn finish(&self, id: EventId, handled: bool, now: Instant) {
        self.end(id, handled, now);
        self.finished.notify_waiters();
    }

    fn end(&self, id: EventId, handled: bool, now: Instant) {
        let key = self.key(&id);
        let now = self.second(now);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !handled || self.window.is_zero() {
            inner.ids.remove(&key);
            return;
        }
        while let Some(&(at, old)) = inner.order.front() {
            if self.within(at, now) && inner.order.len() < CAPACITY {
                break;
            }
            inner.order.pop_front();
            if inner.ids.get(&old) == Some(&Some(at)) {
                inner.ids.remove(&old);
            }
        }
        inner.ids.insert(key, Some(now));
        inner.order.push_back((now, key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_waits_while_in_flight_and_is_dropped_within_the_window() {
        let recent = Recent::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let id = EventId::new("evt-1");
        assert_eq!(recent.claim(&id, t0), Claim::Claimed);
        assert_eq!(recent.claim(&id, t0), Claim::InFlight);
        recent.finish(id.clone(), true, t0);
        assert_eq!(
            recent.claim(&id, t0 + Duration::from_secs(59)),
            Claim::Handled
        );
        assert_eq!(
            recent.claim(&id, t0 + Duration::from_secs(61)),
            Claim::Claimed,
            "the window has passed"
        );
    }

    #[test]
    fn two_publishers_may_use_the_same_message_id() {
        let recent = Recent::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let court = EventId::published("court", "evt-1");
        assert_eq!(recent.claim(&court, t0), Claim::Claimed);
        recent.finish(court.clone(), true, t0);
        assert_eq!(recent.claim(&court, t0), Claim::Handled);
        assert_eq!(
            recent.claim(&EventId::published("prison", "evt-1"), t0),
            Claim::Claimed
        );
    }

    #[tokio::test]
    async fn a_copy_waits_for_the_first_and_is_then_judged() {
        let recent = std::sync::Arc::new(Recent::new(Duration::from_secs(60)));
        let id = EventId::published("court", "evt-3");
        assert_eq!(recent.claim(&id, Instant::now()), Claim::Claimed);
        let copy = {
            let (recent, id) = (std::sync::Arc::clone(&recent), id.clone());
            tokio::spawn(async move { recent.claim_waiting(&id, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !copy.is_finished(),
            "the copy waits while the first is in flight"
        );
        recent.finish(id.clone(), true, Instant::now());
        assert_eq!(copy.await.unwrap(), Claim::Handled);

        // Released: the waiting copy takes it.
        let other = EventId::published("court", "evt-4");
        assert_eq!(recent.claim(&other, Instant::now()), Claim::Claimed);
        let copy = {
            let (recent, other) = (std::sync::Arc::clone(&recent), other.clone());
            tokio::spawn(async move { recent.claim_waiting(&other, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        recent.finish(other, false, Instant::now());
        assert_eq!(copy.await.unwrap(), Claim::Claimed);

        // A handling that never ends: the wait is bounded.
        let stuck = EventId::published("court", "evt-5");
        assert_eq!(recent.claim(&stuck, Instant::now()), Claim::Claimed);
        assert_eq!(
            recent
                .claim_waiting(&stuck, Duration::from_millis(100))
                .await,
            Claim::InFlight
        );
    }

    #[test]
    fn an_id_that_could_not_be_handled_is_released() {
        let recent = Recent::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let id = EventId::new("evt-2");
        assert_eq!(recent.claim(&id, t0), Claim::Claimed);
        recent.finish(id.clone(), false, t0);
        assert_eq!(
            recent.claim(&id, t0),
            Claim::Claimed,
            "the requeued copy is handled"
        );
    }

    #[test]
    fn expired_ids_are_forgotten() {
        let recent = Recent::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for (i, at) in [(1, t0), (2, t0 + Duration::from_secs(61))] {
            let id = EventId::new(format!("evt-{i}"));
            assert_eq!(recent.claim(&id, at), Claim::Claimed);
            recent.finish(id, true, at);
        }
        assert_eq!(recent.inner.lock().unwrap().ids.len(), 1);
    }

    #[test]
    fn memory_is_allocated_once_and_the_oldest_ids_make_room() {
        let recent = Recent::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let room = {
            let inner = recent.inner.lock().unwrap();
            (inner.ids.capacity(), inner.order.capacity())
        };
        for i in 0..3 * CAPACITY {
            let id = EventId::new(format!("evt-{i}"));
            assert_eq!(recent.claim(&id, t0), Claim::Claimed);
            recent.finish(id, true, t0);
            if i % 10_000 == 0 {
                let inner = recent.inner.lock().unwrap();
                // A table that had grown would have room for twice as many.
                assert!(inner.ids.capacity() <= room.0, "the table grew at {i}");
                assert_eq!(inner.order.capacity(), room.1, "the queue grew at {i}");
            }
        }
        let inner = recent.inner.lock().unwrap();
        assert_eq!(inner.order.len(), CAPACITY);
        assert_eq!(inner.ids.len(), CAPACITY);
        drop(inner);
        assert_eq!(
            recent.claim(&EventId::new("evt-0"), t0),
            Claim::Claimed,
            "the oldest ids were forgotten to make room"
        );
        assert_eq!(
            recent.claim(&EventId::new(format!("evt-{}", 3 * CAPACITY - 1)), t0),
            Claim::Handled
        );
    }
}
