//! Log lines written out in batches.
//!
//! A busy Herald logs a line per delivery. Writing each line as it comes costs a system call
//! per line, and handing each to a writer thread costs a copy and a wake-up per line; both
//! showed in profiles of a loaded service. Instead, every line is copied into one buffer under
//! a lock (the line is formatted before the lock is taken), and the buffer is written out when
//! it fills, every [`FLUSH_EVERY`] by a thread of its own, and when Herald exits. A line
//! therefore reaches the log at most [`FLUSH_EVERY`] after it is made; one lost to a crash
//! that gives no chance to flush is at most that old.

use std::io::{BufWriter, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Lines held before a write is made regardless of time.
const CAPACITY: usize = 64 * 1024;

struct Shared<W: Write> {
    out: Mutex<BufWriter<W>>,
    stopping: Mutex<bool>,
    stop: Condvar,
}

impl<W: Write> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, BufWriter<W>> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer the log formatter is given: each line goes into the shared buffer.
pub struct Batched<W: Write>(Arc<Shared<W>>);

/// Writes out the buffer every [`FLUSH_EVERY`]; when dropped, writes out what is left.
pub struct Flusher<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    thread: Option<JoinHandle<()>>,
}

impl<W: Write + Send + 'static> Batched<W> {
    /// A writer into `out` and the flusher that must live as long as logging does.
    pub fn new(out: W, every: Duration) -> (Batched<W>, Flusher<W>) {
        let shared = Arc::new(Shared {
            out: Mutex::new(BufWriter::with_capacity(CAPACITY, out)),
            stopping: Mutex::new(false),
            stop: Condvar::new(),
        });
        let flushing = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("herald-log".into())
            .spawn(move || {
                let mut stopping = flushing
                    .stopping
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                while !*stopping {
                    stopping = flushing
                        .stop
                        .wait_timeout(stopping, every)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    // A failed write has nowhere to be reported; the next flush tries again.
                    let _ = flushing.lock().flush();
                }
            })
            .ok();
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            thread,
        };
        (Batched(shared), flusher)
    }
}

impl<W: Write + Send + 'static> Drop for Flusher<W> {
    fn drop(&mut self) {
        *self
            .shared
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.stop.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Also when the thread could not be started.
        let _ = self.shared.lock().flush();
    }
}

/// One line's hold on the buffer.
pub struct Line<'a, W: Write>(MutexGuard<'a, BufWriter<W>>);

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    /// Flushing is the batch's business: a line does not force a write.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Line<'a, W> {
        Line(self.0.lock())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An output the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn a_line_is_written_out_within_the_interval_without_anyone_flushing() {
        let sink = Sink::default();
        let (writer, _flusher) = Batched::new(sink.clone(), Duration::from_millis(20));
        writer.make_writer().write_all(b"one\n").unwrap();
        writer.make_writer().write_all(b"two\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.text() != "one\ntwo\n" {
            assert!(
                Instant::now() < deadline,
                "not written out: {:?}",
                sink.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn everything_is_written_out_when_the_flusher_is_dropped() {
        let sink = Sink::default();
        // An interval far longer than the test: only the drop can write the lines out.
        let (writer, flusher) = Batched::new(sink.clone(), Duration::from_secs(3600));
        for i in 0..1000 {
            writeln!(writer.make_writer(), "line {i}").unwrap();
        }
        assert_eq!(
            sink.text(),
            "",
            "nothing written before the buffer fills or time is up"
        );
        drop(flusher);
        let text = sink.text();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.ends_with("line 999\n"));
    }

    #[test]
    fn a_full_buffer_is_written_out_at_once() {
        let sink = Sink::default();
        let (writer, _flusher) = Batched::new(sink.clone(), Duration::from_secs(3600));
        let line = [b'x'; 1000];
        for _ in 0..(2 * CAPACITY / line.len()) {
            writer.make_writer().write_all(&line).unwrap();
        }
        assert!(sink.0.lock().unwrap().len() >= CAPACITY);
    }
}
