//! Acknowledging handled events in batches.
//!
//! Each acknowledgement costs the broker a command on the quorum queue; one with `multiple`
//! set settles every delivery up to its tag at the cost of one. Events finish out of order
//! (their webhooks take different times), so an event is acknowledged once every event
//! delivered before it on the channel is settled too: the leading run of finished events goes
//! as one acknowledgement. One that waits behind a slower event for longer than [`HOLD`] is
//! acknowledged on its own, so a slow recipient never holds prefetch slots for others. A
//! delivery still being handled is never covered: nothing is acknowledged before it is
//! delivered, retried or parked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

/// How long a finished event may wait for the events delivered before it.
pub const HOLD: Duration = Duration::from_millis(20);

/// The deliveries of one channel not yet settled, by delivery tag.
#[derive(Debug)]
struct Open<A> {
    tags: BTreeMap<u64, Slot<A>>,
}

#[derive(Debug)]
enum Slot<A> {
    Handling,
    Done { acker: A, since: Instant },
}

/// What to acknowledge now.
#[derive(Debug)]
struct Batch<A> {
    /// The last of the leading run of finished deliveries, and how many the run holds:
    /// acknowledged with `multiple`.
    run: Option<(A, usize)>,
    /// Finished deliveries that waited [`HOLD`] behind one still being handled.
    singles: Vec<A>,
    /// When the next of those will have waited long enough.
    next: Option<Instant>,
}

impl<A> Open<A> {
    fn new() -> Open<A> {
        Open {
            tags: BTreeMap::new(),
        }
    }

    fn handling(&mut self, tag: u64) {
        self.tags.insert(tag, Slot::Handling);
    }

    /// Marks a delivery finished; gives the acker back if the tag is not open here.
    fn done(&mut self, tag: u64, acker: A, now: Instant) -> Option<A> {
        match self.tags.get_mut(&tag) {
            Some(slot) => {
                *slot = Slot::Done { acker, since: now };
                None
            }
            None => Some(acker),
        }
    }

    /// A delivery settled some other way (returned to the queue).
    fn forget(&mut self, tag: u64) {
        self.tags.remove(&tag);
    }

    fn take(&mut self, now: Instant, hold: Duration) -> Batch<A> {
        let mut run = None;
        while let Some(entry) = self.tags.first_entry() {
            if matches!(entry.get(), Slot::Handling) {
                break;
            }
            if let Slot::Done { acker, .. } = entry.remove() {
                let count = run.as_ref().map_or(0, |(_, n)| *n);
                run = Some((acker, count + 1));
            }
        }
        let waited = |since: Instant| now.saturating_duration_since(since) >= hold;
        let due: Vec<u64> = self
            .tags
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Done { since, .. } if waited(*since)))
            .map(|(tag, _)| *tag)
            .collect();
        let singles = due
            .into_iter()
            .filter_map(|tag| match self.tags.remove(&tag) {
                Some(Slot::Done { acker, .. }) => Some(acker),
                _ => None,
            })
            .collect();
        let next = self
            .tags
            .values()
            .filter_map(|slot| match slot {
                Slot::Done { since, .. } => Some(*since + hold),
                Slot::Handling => None,
            })
            .min();
        Batch { run, singles, next }
    }
}

/// Batches the acknowledgements of one channel's consumer.
pub struct Acks {
    open: Mutex<Open<Acker>>,
    wake: Notify,
    closing: AtomicBool,
}

impl Acks {
    /// Starts the task that sends the acknowledgements; it ends at [`Acks::close`].
    pub fn start() -> (Arc<Acks>, JoinHandle<()>) {
        let acks = Arc::new(Acks {
            open: Mutex::new(Open::new()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
        });
        let task = tokio::spawn(Arc::clone(&acks).run());
        (acks, task)
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open<Acker>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A delivery handed to a handler: called in delivery order, before the handler starts.
    pub fn handling(&self, tag: u64) {
        self.open().handling(tag);
    }

    /// The delivery is handled (delivered, retried or parked): acknowledge it.
    pub async fn done(&self, tag: u64, acker: &Acker) {
        let unknown = self.open().done(tag, acker.clone(), Instant::now());
        match unknown {
            None => self.wake.notify_one(),
            Some(acker) => send(&acker, false, 1).await,
        }
    }

    /// The delivery was returned to the queue (`nack`), so it is no longer open.
    pub fn forget(&self, tag: u64) {
        self.open().forget(tag);
        self.wake.notify_one();
    }

    /// Acknowledges every finished delivery now and ends the task. Deliveries still being
    /// handled stay unacknowledged: the broker redelivers them.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    async fn run(self: Arc<Acks>) {
        loop {
            let closing = self.closing.load(Ordering::Acquire);
            let hold = if closing { Duration::ZERO } else { HOLD };
            let batch = self.open().take(Instant::now(), hold);
            if let Some((acker, count)) = &batch.run {
                send(acker, true, *count).await;
            }
            for acker in &batch.singles {
                send(acker, false, 1).await;
            }
            if closing {
                return;
            }
            match batch.next {
                Some(at) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

async fn send(acker: &Acker, multiple: bool, count: usize) {
    if let Err(e) = acker.ack(BasicAckOptions { multiple }).await {
        // The broker returns unacknowledged messages to the queue when the channel closes.
        warn!(error = %e, events = count, "cannot acknowledge; the broker will redeliver");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(open: &mut Open<u64>, at: Instant) -> (Option<(u64, usize)>, Vec<u64>) {
        let b = open.take(at, HOLD);
        (b.run, b.singles)
    }

    #[test]
    fn only_a_leading_run_of_finished_deliveries_is_acknowledged_at_once() {
        let t0 = Instant::now();
        let mut open = Open::new();
        for tag in 1..=5 {
            open.handling(tag);
        }
        // 2 and 3 finish first: 1 is still being handled, so nothing goes yet.
        assert_eq!(open.done(2, 2, t0), None);
        assert_eq!(open.done(3, 3, t0), None);
        assert_eq!(batch(&mut open, t0), (None, vec![]));
        assert_eq!(open.take(t0, HOLD).next, Some(t0 + HOLD));
        // 1 finishes: 1, 2 and 3 go as one, with 3's acker; 4 and 5 are still open.
        open.done(1, 1, t0);
        assert_eq!(batch(&mut open, t0), (Some((3, 3)), vec![]));
        assert_eq!(batch(&mut open, t0), (None, vec![]));
        // 5 finishes behind a slow 4: it goes on its own once it has waited HOLD.
        open.done(5, 5, t0);
        assert_eq!(batch(&mut open, t0 + HOLD / 2), (None, vec![]));
        assert_eq!(batch(&mut open, t0 + HOLD), (None, vec![5]));
        // 4 is returned to the queue: it no longer holds anything back.
        open.handling(6);
        open.done(6, 6, t0);
        open.forget(4);
        assert_eq!(batch(&mut open, t0), (Some((6, 1)), vec![]));
        assert!(open.tags.is_empty());
    }

    #[test]
    fn a_delivery_being_handled_is_never_covered() {
        let t0 = Instant::now();
        let mut open = Open::new();
        for tag in 1..=100 {
            open.handling(tag);
        }
        // Every other delivery finishes, in reverse order.
        for tag in (1..=100).rev().filter(|t| t % 2 == 1) {
            open.done(tag, tag, t0);
        }
        let (run, singles) = batch(&mut open, t0 + HOLD);
        assert_eq!(run, Some((1, 1)), "only 1 leads; 2 is being handled");
        assert_eq!(singles.len(), 49);
        assert!(singles.iter().all(|t| t % 2 == 1));
        // A tag that was never opened is handed back, to be acknowledged on its own.
        assert_eq!(open.done(1000, 1000, t0), Some(1000));
    }
}
