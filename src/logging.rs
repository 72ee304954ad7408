//! Log lines written out in batches.
//!
//! A busy Herald logs a line per delivery. Writing each line as it comes costs a system call
//! per line, and handing each to a writer thread costs a copy and a wake-up per line; both
//! showed in profiles of a loaded service. Instead, each line (formatted before any lock is
//! taken) is appended to one buffer, and a thread of its own swaps the buffer for an empty one
//! and writes it out: every [`FLUSH_EVERY`], as soon as it holds [`BATCH`] bytes, and when
//! Herald stops. The write happens outside the lock, so logging never waits on stderr unless
//! [`LIMIT`] bytes are waiting (stderr blocked, or a reader far behind): then it waits, as
//! nothing is dropped. The two buffers are allocated once, so the log's memory is fixed. A line reaches stderr at most [`FLUSH_EVERY`] after it is made while
//! stderr accepts writes; a crash that gives no chance to flush loses at most that much.

use std::io::{Stderr, Write};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Bytes in the buffer that have it written out at once.
const BATCH: usize = 64 * 1024;

/// Bytes in the buffer beyond which a new line waits for the buffer to be written out.
const LIMIT: usize = 1024 * 1024;

/// Room for the buffer and the batch being written, allocated once: the buffer never grows
/// (so never moves) unless a single line is larger than the headroom, and Herald's memory
/// stays the same however far behind stderr falls.
const ROOM: usize = LIMIT + BATCH;

/// How long stopping waits for the last write before giving up on it.
const STOP_WAIT: Duration = Duration::from_secs(2);

struct State {
    buf: Vec<u8>,
    /// Asked to stop: write out what is left and end.
    stopping: bool,
    /// The thread has ended: lines are written out as they come.
    stopped: bool,
}

struct Shared<W> {
    state: Mutex<State>,
    /// Wakes the thread: time is up, the buffer is full, or stopping.
    wake: Condvar,
    /// Wakes lines waiting for room.
    drained: Condvar,
    out: Mutex<W>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `bytes` to `out`. A failed write has nowhere to be reported and is not retried:
/// logging must not stop Herald.
fn emit(out: &mut impl Write, bytes: &[u8]) {
    if !bytes.is_empty() {
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}

impl<W: Write> Shared<W> {
    fn write_out(&self, bytes: &[u8]) {
        emit(&mut *lock(&self.out), bytes);
    }

    /// Writes out what is buffered now. The output is locked before the buffer is read (as the
    /// thread does), so batches come out in the order they were taken.
    fn flush_now(&self) {
        let mut state = lock(&self.state);
        emit(&mut *lock(&self.out), &state.buf);
        state.buf.clear();
        drop(state);
        self.drained.notify_all();
    }

    fn append(&self, line: &[u8]) {
        let mut state = lock(&self.state);
        while state.buf.len() >= LIMIT && !state.stopped {
            state = self
                .drained
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.stopped {
            drop(state);
            self.write_out(line);
            return;
        }
        state.buf.extend_from_slice(line);
        if state.buf.len() >= BATCH {
            self.wake.notify_one();
        }
    }

    /// The thread: waits for time, a full buffer or stopping; swaps the buffer; writes.
    fn run(&self, every: Duration) {
        let mut spare = Vec::with_capacity(ROOM);
        let mut state = lock(&self.state);
        loop {
            if !state.stopping && state.buf.len() < BATCH {
                state = self
                    .wake
                    .wait_timeout(state, every)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let mut out = lock(&self.out);
            spare.clear();
            std::mem::swap(&mut state.buf, &mut spare);
            let stopping = state.stopping;
            drop(state);
            self.drained.notify_all();
            emit(&mut *out, &spare);
            drop(out);
            if stopping {
                return;
            }
            state = lock(&self.state);
        }
    }
}

/// The process's log, for [`flush`].
static PROCESS_LOG: OnceLock<Arc<Shared<Stderr>>> = OnceLock::new();

/// Writes out the process's buffered log lines now: before printing to stderr directly, so
/// the log and the message come out in the order they were made.
pub fn flush() {
    if let Some(log) = PROCESS_LOG.get() {
        log.flush_now();
    }
}

/// The writer the log formatter is given: each line goes into the shared buffer.
pub struct Batched<W>(Arc<Shared<W>>);

/// Stops the thread when dropped, writing out what is left (waiting at most [`STOP_WAIT`]
/// for a blocked stderr). Lines made after that are written out as they come.
pub struct Flusher<W: Write> {
    shared: Arc<Shared<W>>,
    done: Option<mpsc::Receiver<()>>,
}

impl<W: Write + Send + 'static> Batched<W> {
    /// A writer into `out` and the flusher that must live as long as logging does.
    pub fn new(out: W, every: Duration) -> (Batched<W>, Flusher<W>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(ROOM),
                stopping: false,
                stopped: false,
            }),
            wake: Condvar::new(),
            drained: Condvar::new(),
            out: Mutex::new(out),
        });
        let writing = Arc::clone(&shared);
        let (tx, rx) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("herald-log".into())
            .spawn(move || {
                writing.run(every);
                let _ = tx.send(());
            })
            .is_ok();
        if !started {
            // No thread: every line is written out as it comes.
            lock(&shared.state).stopped = true;
        }
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            done: started.then_some(rx),
        };
        (Batched(shared), flusher)
    }
}

impl Batched<Stderr> {
    /// This writer's buffer is the one [`flush`] writes out.
    pub fn for_process(self) -> Self {
        let _ = PROCESS_LOG.set(Arc::clone(&self.0));
        self
    }
}

impl<W: Write> Drop for Flusher<W> {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_all();
        let finished = self
            .done
            .take()
            .is_none_or(|done| done.recv_timeout(STOP_WAIT).is_ok());
        let mut state = lock(&self.shared.state);
        state.stopped = true;
        // Lines made while the thread wrote its last batch; with the thread stuck on a
        // blocked stderr they stay unwritten rather than keep Herald from exiting.
        let rest = std::mem::take(&mut state.buf);
        drop(state);
        self.shared.drained.notify_all();
        if finished {
            self.shared.write_out(&rest);
        }
    }
}

/// One line on its way into the buffer.
pub struct Line<'a, W>(&'a Shared<W>);

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.append(buf);
        Ok(())
    }

    /// Flushing is the thread's business: a line does not force a write.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Line<'a, W> {
        Line(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An output the test can read while the writer owns it; `block` holds its writes.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        block: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.block.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_line_is_written_out_within_the_interval_without_anyone_flushing() {
        let sink = Sink::default();
        let (writer, _flusher) = Batched::new(sink.clone(), Duration::from_millis(20));
        writer.make_writer().write_all(b"one\n").unwrap();
        writer.make_writer().write_all(b"two\n").unwrap();
        wait_for("both lines", || sink.text() == "one\ntwo\n");
    }

    #[test]
    fn everything_is_written_out_in_order_when_the_flusher_is_dropped() {
        let sink = Sink::default();
        // An interval far longer than the test: only the drop can write the lines out.
        let (writer, flusher) = Batched::new(sink.clone(), Duration::from_secs(3600));
        for i in 0..1000 {
            writeln!(writer.make_writer(), "line {i}").unwrap();
        }
        assert_eq!(
            sink.text(),
            "",
            "nothing written before a batch or the time is up"
        );
        drop(flusher);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), expected);
        // After the stop, lines go straight out.
        writer.make_writer().write_all(b"late\n").unwrap();
        assert!(sink.text().ends_with("line 999\nlate\n"));
    }

    #[test]
    fn a_full_batch_is_written_out_without_waiting_for_the_interval() {
        let sink = Sink::default();
        let (writer, _flusher) = Batched::new(sink.clone(), Duration::from_secs(3600));
        let line = [b'x'; 1000];
        for _ in 0..(BATCH / line.len() + 1) {
            writer.make_writer().write_all(&line).unwrap();
        }
        wait_for("a batch", || sink.bytes.lock().unwrap().len() >= BATCH);
    }

    #[test]
    fn lines_do_not_wait_on_a_blocked_output_and_stopping_gives_up_on_it() {
        let sink = Sink::default();
        let held = sink.block.lock().unwrap();
        let (writer, flusher) = Batched::new(sink.clone(), Duration::from_millis(5));
        // The thread takes the first line and blocks writing it; later lines are buffered
        // and return at once.
        writer.make_writer().write_all(b"first\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        for _ in 0..1000 {
            writer.make_writer().write_all(b"buffered\n").unwrap();
        }
        assert!(started.elapsed() < STOP_WAIT, "lines waited on the output");
        // Stopping gives up on the blocked output after a bounded wait.
        let stopping = Instant::now();
        drop(flusher);
        assert!(stopping.elapsed() < STOP_WAIT + Duration::from_secs(3));
        drop(held);
        wait_for("the first line", || sink.text().starts_with("first\n"));
    }

    #[test]
    fn flush_writes_out_at_once() {
        let sink = Sink::default();
        let (writer, _flusher) = Batched::new(sink.clone(), Duration::from_secs(3600));
        writer.make_writer().write_all(b"now\n").unwrap();
        writer.0.flush_now();
        assert_eq!(sink.text(), "now\n");
    }
}
