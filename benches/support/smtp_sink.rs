//! The end-to-end benchmark's SMTP server: a tokio TCP server on loopback that takes every
//! message and prints its Message-ID as it takes it, as the aiosmtpd handler it replaces does,
//! so arrivals are timed the same way whichever server runs. Started by the benchmark as a
//! child process of its own (`e2e --smtp-sink`), so its CPU is read from /proc apart from the
//! consumer's and the benchmark's.
//!
//! It speaks what lettre uses: the greeting, EHLO or HELO, MAIL, RCPT, DATA (dot-unstuffed, up
//! to the line holding a lone dot), RSET, NOOP and QUIT. Its EHLO advertises 8BITMIME only, as
//! aiosmtpd does (with SIZE and HELP): no STARTTLS or AUTH, which lettre would then use. Like
//! any server it leaves its kernel to delay ACKs, so a client that writes a message's last
//! bytes apart with Nagle on waits for them (docs/performance.md, "The email path"), unless
//! `SINK_QUICKACK` is set: then it asks for an ACK at once after every read (`TCP_QUICKACK`),
//! which removes that wait as `TCP_NODELAY` on the client's side would.
//!
//! On stdout, each line written as it happens: `ready PORT` once it listens, then `connect`
//! and `close` for each connection and, for each message, its Message-ID (`-` if it has none),
//! written before the message's `250` is sent.

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A line longer than this (without its end) closes the connection; RFC 5321 allows 1,000.
const MAX_LINE: usize = 64 * 1024;

const GREETING: &[u8] = b"220 127.0.0.1 e2e sink ESMTP\r\n";
const EHLO: &[u8] = b"250-127.0.0.1\r\n250 8BITMIME\r\n";
const HELO: &[u8] = b"250 127.0.0.1\r\n";
const OK: &[u8] = b"250 OK\r\n";
const GO_AHEAD: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const BYE: &[u8] = b"221 Bye\r\n";
const NEED_MAIL: &[u8] = b"503 Error: need MAIL command\r\n";
const NEED_RCPT: &[u8] = b"503 Error: need RCPT command\r\n";
const UNKNOWN: &[u8] = b"500 Error: command not recognized\r\n";

pub fn main() {
    let quickack = std::env::var_os("SINK_QUICKACK").is_some();
    // One thread, as aiosmtpd has: its CPU per message is the figure, not its parallelism.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let port = listener.local_addr().expect("sink address").port();
        say(&format!("ready {port}"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                say("connect");
                let _ = session(stream, quickack).await;
                say("close");
            });
        }
    });
}

/// Writes one line to the benchmark at once; exits when the benchmark has gone.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// One client's connection: read buffer and what has been read of it.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of what has not been read as a line yet.
    at: usize,
    quickack: bool,
}

impl Conn {
    /// The next line, without its line end (CRLF or a bare LF), as a range of `buf`; None at
    /// the end of the stream.
    async fn line(&mut self) -> std::io::Result<Option<(usize, usize)>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.at..]) {
                let start = self.at;
                let mut end = start + i;
                self.at = end + 1;
                if end > start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                return Ok(Some((start, end)));
            }
            if self.buf.len() - self.at > MAX_LINE {
                return Err(std::io::Error::other("line too long"));
            }
            self.buf.drain(..self.at);
            self.at = 0;
            self.buf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
            if self.quickack {
                let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
            }
        }
    }

    async fn reply(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(text).await
    }

    /// The message after DATA, up to the line holding a lone dot: its Message-ID, the first
    /// word of the header's value (on the next line if the header is folded).
    async fn data(&mut self) -> std::io::Result<String> {
        let mut in_head = true;
        let mut id: Option<String> = None;
        let mut folded_id = false;
        loop {
            let Some((start, end)) = self.line().await? else {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            };
            let mut line = &self.buf[start..end];
            if line == b"." {
                return Ok(id.unwrap_or_else(|| "-".into()));
            }
            // Dot-stuffing: a line the client began with an extra dot.
            if line.first() == Some(&b'.') {
                line = &line[1..];
            }
            if !in_head {
                continue;
            }
            if line.is_empty() {
                in_head = false;
            } else if folded_id && matches!(line[0], b' ' | b'\t') {
                id = first_word(line);
                folded_id = false;
            } else if id.is_none()
                && line.len() >= 11
                && line[..11].eq_ignore_ascii_case(b"message-id:")
            {
                id = first_word(&line[11..]);
                folded_id = id.is_none();
            } else {
                folded_id = false;
            }
        }
    }
}

fn first_word(text: &[u8]) -> Option<String> {
    let word = text
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())?;
    Some(String::from_utf8_lossy(word).into_owned())
}

async fn session(stream: TcpStream, quickack: bool) -> std::io::Result<()> {
    // Its replies go out whole and at once, as asyncio's (aiosmtpd's) do.
    stream.set_nodelay(true)?;
    let mut c = Conn {
        stream,
        buf: Vec::with_capacity(16 * 1024),
        at: 0,
        quickack,
    };
    c.reply(GREETING).await?;
    // MAIL given; recipients given since.
    let mut mail = false;
    let mut recipients = 0usize;
    while let Some((start, end)) = c.line().await? {
        let line = &c.buf[start..end];
        let mut verb = [0u8; 4];
        if line.len() >= 4 && (line.len() == 4 || line[4] == b' ') {
            verb.copy_from_slice(&line[..4]);
            verb.make_ascii_uppercase();
        }
        let answer = match &verb {
            b"EHLO" | b"HELO" | b"RSET" => {
                mail = false;
                recipients = 0;
                match &verb {
                    b"EHLO" => EHLO,
                    b"HELO" => HELO,
                    _ => OK,
                }
            }
            b"MAIL" => {
                mail = true;
                recipients = 0;
                OK
            }
            b"RCPT" if mail => {
                recipients += 1;
                OK
            }
            b"RCPT" => NEED_MAIL,
            b"DATA" if recipients > 0 => {
                c.reply(GO_AHEAD).await?;
                let id = c.data().await?;
                say(&id);
                mail = false;
                recipients = 0;
                OK
            }
            b"DATA" => NEED_RCPT,
            b"NOOP" => OK,
            b"QUIT" => {
                c.reply(BYE).await?;
                return Ok(());
            }
            _ => UNKNOWN,
        };
        c.reply(answer).await?;
    }
    Ok(())
}
