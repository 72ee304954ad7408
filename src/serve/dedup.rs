//! Event ids this process is handling or has handled recently. A copy of an event (published or
//! delivered again with the same id) that arrives within the window after the first was handled
//! is acknowledged without being routed a second time. A copy that arrives while the first is
//! still in flight goes back to the queue, to be judged once the first is done: if the first
//! could not be handled its id is released and the copy is handled then.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::event::EventId;

/// Most handled ids remembered, whatever the window, so memory stays bounded.
const CAPACITY: usize = 100_000;

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

pub struct Recent {
    window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Id -> when it was handled; `None` while in flight.
    ids: HashMap<EventId, Option<Instant>>,
    order: VecDeque<(Instant, EventId)>,
}

impl Recent {
    pub fn new(window: Duration) -> Recent {
        Recent {
            window,
            inner: Mutex::default(),
        }
    }

    /// Takes `id` for handling, unless a copy is in flight or was handled within the window.
    pub fn claim(&self, id: &EventId, now: Instant) -> Claim {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.ids.get(id) {
            Some(None) => Claim::InFlight,
            Some(Some(at)) if now.duration_since(*at) < self.window => Claim::Handled,
            _ => {
                inner.ids.insert(id.clone(), None);
                Claim::Claimed
            }
        }
    }

    /// Ends the handling of a claimed id: remembered if it was handled, released if not.
    pub fn finish(&self, id: EventId, handled: bool, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !handled || self.window.is_zero() {
            inner.ids.remove(&id);
            return;
        }
        while let Some((at, old)) = inner.order.front().cloned() {
            if now.duration_since(at) < self.window && inner.order.len() < CAPACITY {
                break;
            }
            inner.order.pop_front();
            if inner.ids.get(&old) == Some(&Some(at)) {
                inner.ids.remove(&old);
            }
        }
        inner.ids.insert(id.clone(), Some(now));
        inner.order.push_back((now, id));
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
}
