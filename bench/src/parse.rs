//! `tidings-bench parse`: the hand-written frame reader (`wire::ws::FrameReader`) against
//! the libraries the issue names for parsing peer input, in one process and on the same
//! bytes: tungstenite (the version tokio-tungstenite uses here) and fastwebsockets.
//!
//! - Throughput: N masked client text frames fed in 4 KiB reads, in three shapes (a
//!   120-byte publish; the same in 3 fragments with a ping between; 16 KiB messages, the
//!   largest the server accepts). Every implementation reads from the same in-memory
//!   [`Wire`], which hands out at most 4 KiB per read and swallows writes (tungstenite
//!   answers pings, and cannot be told not to). Rounds alternate the implementations, and
//!   the order rotates from round to round, so a slow second of this shared machine falls
//!   on all alike; the median round is reported.
//! - Idle memory: heap held per connection after one publish was read, measured for all
//!   alike with a counting global allocator (live requested bytes; malloc's own overhead
//!   is not included), plus the reader's inline size.
//!
//! Every message is checked (kind, length, sampled bytes; every byte in an untimed pass
//! first), and the counts must come out exact, so a broken parser cannot post a time.
//!
//! fastwebsockets is driven with `now_or_never`: the in-memory stream is always ready, so
//! its futures complete on the first poll and no runtime or task switch is measured (a
//! tokio duplex would add a writer task and channel wake-ups that the other two do not
//! pay). It reads through its `FragmentCollector` in every shape, as a server must (RFC
//! 6455 lets any client fragment any message), with `auto_pong` off so that pings come
//! back to the caller as they do from ours.

use futures_util::FutureExt as _;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite;

/// The largest message the server accepts: the limit every implementation is given.
const LIMIT: usize = app::protocol::MAX_PUBLISH_BYTES;
/// Bytes per read, as the server's read loop (`server/src/transport/ws.rs`).
const READ: usize = 4096;
/// Distinct messages (refs and masks) in one period of the input stream.
const PERIOD: usize = 1000;
const PUBLISH_LEN: usize = 120;
const PING: &[u8] = b"hb";

// ---------------------------------------------------------------------------------------
// The counting allocator.

/// `System`, counting the live bytes of one thread while it has [`Window`] open: other
/// threads (tokio's idle workers, tests running alongside) do not disturb the count. For
/// every other subcommand of this binary it costs one relaxed load per allocation.
struct Counting;

/// Whether any thread is counting (the fast path for all others).
static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread counts; its live bytes since the window opened.
    static WINDOW: Cell<Option<isize>> = const { Cell::new(None) };
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn count(delta: isize) {
    if COUNTING.load(Relaxed) {
        // `try_with`: no counting while the thread-local is being torn down.
        let _ = WINDOW.try_with(|w| {
            if let Some(live) = w.get() {
                w.set(Some(live + delta));
            }
        });
    }
}

/// Counts this thread's allocations until [`Window::close`].
struct Window;

impl Window {
    fn open() -> Window {
        WINDOW.with(|w| w.set(Some(0)));
        COUNTING.store(true, Relaxed);
        Window
    }

    /// Live bytes allocated (net of frees) on this thread since `open`.
    fn close(self) -> isize {
        WINDOW.with(|w| w.take()).unwrap_or(0)
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

// ---------------------------------------------------------------------------------------
// The input.

/// One shape of input: a period of `PERIOD` messages, repeated.
struct Input {
    name: &'static str,
    /// The client's bytes for one period: masked frames.
    period: Vec<u8>,
    /// Each message's payload, unmasked (what a reader must hand out).
    payloads: Vec<Vec<u8>>,
    /// Wire bytes per message (all messages of a shape have the same length).
    wire_len: usize,
    /// Pings per message.
    pings: usize,
    /// Messages per run.
    n: usize,
}

impl Input {
    fn bytes(&self, n: usize) -> u64 {
        (n * self.wire_len) as u64
    }

    fn payload_len(&self) -> usize {
        self.payloads[0].len()
    }
}

/// A publish of exactly `len` bytes (the body padded), ref `r0000`-`r9999`.
fn publish_json(i: usize, len: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"type":"publish","ref":"r{:04}","stream":"chat","data":{{"author":"ann","body":"hello"#,
        i % 10_000
    );
    let tail = r#""}}"#;
    assert!(head.len() + tail.len() <= len, "a publish needs more room");
    // Mostly ASCII, with a two-byte character now and then, so UTF-8 validation has work.
    const FILL: &str = " - cafe au lait, crème brûlée, 42 cookies;";
    let mut body = String::new();
    for c in FILL.chars().cycle() {
        if body.len() + c.len_utf8() > len - head.len() - tail.len() {
            break;
        }
        body.push(c);
    }
    while body.len() < len - head.len() - tail.len() {
        body.push('.');
    }
    let json = format!("{head}{body}{tail}").into_bytes();
    assert_eq!(json.len(), len);
    json
}

/// A small deterministic generator for the masks.
struct XorShift(u64);

impl XorShift {
    fn mask(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 as u32).to_be_bytes()
    }
}

/// Appends one masked client frame.
fn client_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

#[derive(Clone, Copy)]
enum Shape {
    /// One frame per message.
    Whole,
    /// Three fragments, a ping between the first and the second.
    Fragmented,
}

fn input(name: &'static str, len: usize, shape: Shape, n: usize) -> Input {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ len as u64);
    let payloads: Vec<Vec<u8>> = (0..PERIOD).map(|i| publish_json(i, len)).collect();
    let mut period = Vec::new();
    let mut wire_len = 0;
    for (i, p) in payloads.iter().enumerate() {
        let start = period.len();
        match shape {
            Shape::Whole => client_frame(&mut period, true, 0x1, p, rng.mask()),
            Shape::Fragmented => {
                let (a, rest) = p.split_at(len / 3);
                let (b, c) = rest.split_at(len / 3);
                client_frame(&mut period, false, 0x1, a, rng.mask());
                client_frame(&mut period, true, 0x9, PING, rng.mask());
                client_frame(&mut period, false, 0x0, b, rng.mask());
                client_frame(&mut period, true, 0x0, c, rng.mask());
            }
        }
        let l = period.len() - start;
        assert!(
            i == 0 || l == wire_len,
            "messages of a shape have one length"
        );
        wire_len = l;
    }
    Input {
        name,
        period,
        payloads,
        wire_len,
        pings: usize::from(matches!(shape, Shape::Fragmented)),
        n,
    }
}

/// The client's side of the socket: `left` bytes of the period repeated, handed out at
/// most [`READ`] bytes per read (fewer at the end). Writes are accepted and dropped.
struct Wire<'a> {
    period: &'a [u8],
    at: usize,
    left: u64,
}

impl<'a> Wire<'a> {
    fn new(period: &'a [u8], bytes: u64) -> Wire<'a> {
        Wire {
            period,
            at: 0,
            left: bytes,
        }
    }

    /// The next at most `max` bytes, as one or two slices (the period wraps).
    fn next(&mut self, max: usize) -> (&'a [u8], &'a [u8]) {
        let n = (max.min(READ) as u64).min(self.left) as usize;
        self.left -= n as u64;
        let first = n.min(self.period.len() - self.at);
        let a = &self.period[self.at..self.at + first];
        let b = &self.period[..n - first];
        self.at = if n > first {
            n - first
        } else {
            self.at + first
        };
        if self.at == self.period.len() {
            self.at = 0;
        }
        (a, b)
    }
}

impl io::Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (a, b) = self.next(buf.len());
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..a.len() + b.len()].copy_from_slice(b);
        Ok(a.len() + b.len())
    }
}

impl io::Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Straight into the caller's spare capacity: no zeroing that the library's own
        // read path would not do.
        let (a, b) = self.next(buf.remaining());
        buf.put_slice(a);
        buf.put_slice(b);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Wire<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------
// The implementations.

/// What a run read. Compared against what the input holds.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Tally {
    texts: usize,
    text_bytes: u64,
    pings: usize,
}

impl Tally {
    /// Checks a text message against the payload it must be: all of it when `full`,
    /// otherwise its length and three bytes (first, middle, last), which a wrong mask,
    /// offset or length would not get right.
    fn text(&mut self, got: &[u8], input: &Input, full: bool) -> Result<(), String> {
        let want = &input.payloads[self.texts % PERIOD];
        let ok = if full {
            got == &want[..]
        } else {
            let m = want.len() / 2;
            got.len() == want.len()
                && got[0] == want[0]
                && got[m] == want[m]
                && got[got.len() - 1] == want[want.len() - 1]
        };
        if !ok {
            return Err(format!(
                "{}: message {} is wrong ({} bytes, want {})",
                input.name,
                self.texts,
                got.len(),
                want.len()
            ));
        }
        self.texts += 1;
        self.text_bytes += got.len() as u64;
        Ok(())
    }

    fn ping(&mut self, got: &[u8]) -> Result<(), String> {
        if got != PING {
            return Err(format!("ping payload {got:?}"));
        }
        self.pings += 1;
        Ok(())
    }

    /// The run read exactly the `n` messages of the input, and all of its bytes.
    fn check(self, input: &Input, n: usize, wire: &Wire) -> Result<Tally, String> {
        let want = Tally {
            texts: n,
            text_bytes: (n * input.payload_len()) as u64,
            pings: n * input.pings,
        };
        if self != want || wire.left != 0 {
            return Err(format!(
                "{}: read {self:?} with {} bytes unread, want {want:?} and none",
                input.name, wire.left
            ));
        }
        Ok(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Ours,
    /// tungstenite's default configuration (128 KiB read buffer), as axum and
    /// tokio-tungstenite use it.
    Tungstenite,
    /// tungstenite with a 4 KiB read buffer (its documentation's advice for many
    /// connections).
    Tungstenite4k,
    Fastwebsockets,
}

const IMPLS: [Impl; 4] = [
    Impl::Ours,
    Impl::Tungstenite,
    Impl::Tungstenite4k,
    Impl::Fastwebsockets,
];

impl Impl {
    fn label(self) -> &'static str {
        match self {
            Impl::Ours => "ours (wire)",
            Impl::Tungstenite => "tungstenite",
            Impl::Tungstenite4k => "tungstenite 4K",
            Impl::Fastwebsockets => "fastwebsockets",
        }
    }

    fn run(self, input: &Input, n: usize, full: bool) -> Result<Tally, String> {
        match self {
            Impl::Ours => run_ours(input, n, full),
            Impl::Tungstenite => run_tungstenite(input, n, full, tungstenite_config(false)),
            Impl::Tungstenite4k => run_tungstenite(input, n, full, tungstenite_config(true)),
            Impl::Fastwebsockets => run_fastwebsockets(input, n, full),
        }
    }
}

fn run_ours(input: &Input, n: usize, full: bool) -> Result<Tally, String> {
    use wire::ws::{FrameReader, Message};
    let mut wire = Wire::new(&input.period, input.bytes(n));
    let mut reader = FrameReader::new(LIMIT);
    let mut tally = Tally::default();
    while tally.texts < n {
        match reader.next_message() {
            Ok(Some(Message::Text(t))) => tally.text(t.as_bytes(), input, full)?,
            Ok(Some(Message::Ping(p))) => tally.ping(&p)?,
            Ok(Some(other)) => return Err(format!("ours: unexpected {other:?}")),
            Ok(None) => {
                // As the server's read loop: a stack chunk, then `feed`.
                let mut chunk = [0u8; READ];
                let got = io::Read::read(&mut wire, &mut chunk).map_err(|e| e.to_string())?;
                if got == 0 {
                    break;
                }
                reader.feed(&chunk[..got]);
            }
            Err(v) => return Err(format!("ours: {v:?}")),
        }
    }
    tally.check(input, n, &wire)
}

fn tungstenite_config(small: bool) -> tungstenite::protocol::WebSocketConfig {
    let c = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT));
    if small {
        c.read_buffer_size(4096)
    } else {
        c
    }
}

fn run_tungstenite(
    input: &Input,
    n: usize,
    full: bool,
    config: tungstenite::protocol::WebSocketConfig,
) -> Result<Tally, String> {
    use tungstenite::{protocol::Role, Message, WebSocket};
    let wire = Wire::new(&input.period, input.bytes(n));
    let mut ws = WebSocket::from_raw_socket(wire, Role::Server, Some(config));
    let mut tally = Tally::default();
    while tally.texts < n {
        match ws.read().map_err(|e| format!("tungstenite: {e}"))? {
            Message::Text(t) => tally.text(t.as_bytes(), input, full)?,
            Message::Ping(p) => tally.ping(&p)?,
            other => return Err(format!("tungstenite: unexpected {other:?}")),
        }
    }
    tally.check(input, n, ws.get_ref())
}

type Fws<'a> = fastwebsockets::FragmentCollector<Wire<'a>>;

fn fastwebsockets_reader(wire: Wire<'_>) -> Fws<'_> {
    let mut ws = fastwebsockets::WebSocket::after_handshake(wire, fastwebsockets::Role::Server);
    ws.set_auto_pong(false);
    // It refuses a frame of `>= max_message_size` bytes; the others refuse `> LIMIT`.
    ws.set_max_message_size(LIMIT + 1);
    fastwebsockets::FragmentCollector::new(ws)
}

fn run_fastwebsockets(input: &Input, n: usize, full: bool) -> Result<Tally, String> {
    use fastwebsockets::OpCode;
    let wire = Wire::new(&input.period, input.bytes(n));
    let run = async move {
        let mut ws = fastwebsockets_reader(wire);
        let mut tally = Tally::default();
        while tally.texts < n {
            let frame = ws
                .read_frame()
                .await
                .map_err(|e| format!("fastwebsockets: {e}"))?;
            match frame.opcode {
                OpCode::Text => tally.text(&frame.payload, input, full)?,
                OpCode::Ping => tally.ping(&frame.payload)?,
                other => return Err(format!("fastwebsockets: unexpected {other:?}")),
            }
        }
        tally.check(input, n, &ws.into_inner())
    };
    run.now_or_never()
        .ok_or("fastwebsockets waited on an in-memory stream")?
}

// ---------------------------------------------------------------------------------------
// Idle memory.

/// Heap held per idle connection (live bytes, averaged over `k`) and the reader's inline
/// size, after each reader was handed one publish frame and read it.
struct Idle {
    heap: f64,
    inline: usize,
}

/// Creates `k` readers with `open`, holds them, and measures what they hold.
fn held<T>(k: usize, open: impl Fn() -> Result<T, String>) -> Result<Idle, String> {
    let mut readers = Vec::with_capacity(k);
    let window = Window::open();
    let mut result = Ok(());
    for _ in 0..k {
        match open() {
            Ok(r) => readers.push(r),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let live = window.close();
    result?;
    drop(readers);
    Ok(Idle {
        heap: live as f64 / k as f64,
        inline: std::mem::size_of::<T>(),
    })
}

fn idle(imp: Impl, k: usize, frame: &[u8], input: &Input) -> Result<Idle, String> {
    // One message read per reader; the message itself is dropped before the count.
    let one = |tally: Tally| -> Result<(), String> {
        if tally.texts == 1 {
            Ok(())
        } else {
            Err(format!("{}: read {tally:?} from one frame", imp.label()))
        }
    };
    match imp {
        Impl::Ours => held(k, || {
            let mut r = wire::ws::FrameReader::new(LIMIT);
            r.feed(frame);
            let mut tally = Tally::default();
            match r.next_message() {
                Ok(Some(wire::ws::Message::Text(t))) => tally.text(t.as_bytes(), input, true)?,
                other => return Err(format!("ours: {other:?}")),
            }
            one(tally)?;
            Ok(r)
        }),
        Impl::Tungstenite | Impl::Tungstenite4k => held(k, || {
            let config = tungstenite_config(imp == Impl::Tungstenite4k);
            let mut ws = tungstenite::WebSocket::from_raw_socket(
                Wire::new(frame, frame.len() as u64),
                tungstenite::protocol::Role::Server,
                Some(config),
            );
            let mut tally = Tally::default();
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => tally.text(t.as_bytes(), input, true)?,
                other => return Err(format!("tungstenite: {other:?}")),
            }
            one(tally)?;
            Ok(ws)
        }),
        Impl::Fastwebsockets => held(k, || {
            let mut ws = fastwebsockets_reader(Wire::new(frame, frame.len() as u64));
            let mut tally = Tally::default();
            {
                let frame = ws
                    .read_frame()
                    .now_or_never()
                    .ok_or("fastwebsockets waited")?
                    .map_err(|e| e.to_string())?;
                tally.text(&frame.payload, input, true)?;
            }
            one(tally)?;
            Ok(ws)
        }),
    }
}

// ---------------------------------------------------------------------------------------
// The run.

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() - 1) / 2]
}

fn ratio(lib: f64, ours: f64) -> String {
    if ours > 0.0 {
        format!("{:.2}x", lib / ours)
    } else if lib > 0.0 {
        "inf".into()
    } else {
        "1.00x".into()
    }
}

pub fn run(n: usize, rounds: usize, conns: usize) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = rounds.max(1);
    let n = n.max(PERIOD);
    let large_n = (n / 16).max(PERIOD / 10);
    let inputs = [
        input("publish 120 B", PUBLISH_LEN, Shape::Whole, n),
        input("fragmented 3 + ping", PUBLISH_LEN, Shape::Fragmented, n),
        input("16 KiB", LIMIT, Shape::Whole, large_n),
    ];

    // Untimed: every byte of every message of two periods, all implementations alike.
    for i in &inputs {
        for imp in IMPLS {
            let m = (2 * PERIOD).min(i.n);
            imp.run(i, m, true)
                .map_err(|e| format!("{} failed verification: {e}", imp.label()))?;
        }
    }
    eprintln!(
        "verified: all {} implementations parse every shape byte for byte",
        IMPLS.len()
    );

    // times[input][impl]
    let mut times = vec![vec![Vec::new(); IMPLS.len()]; inputs.len()];
    for round in 0..rounds {
        for (x, i) in inputs.iter().enumerate() {
            for k in 0..IMPLS.len() {
                let j = (k + round) % IMPLS.len();
                let start = Instant::now();
                let tally = IMPLS[j].run(i, i.n, false)?;
                let t = start.elapsed();
                std::hint::black_box(tally);
                times[x][j].push(t);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }

    let mut frame = Vec::new();
    client_frame(
        &mut frame,
        true,
        0x1,
        &inputs[0].payloads[0],
        [0x12, 0x34, 0x56, 0x78],
    );
    let mut idles = Vec::new();
    for imp in IMPLS {
        idles.push(idle(imp, conns, &frame, &inputs[0])?);
    }

    println!();
    println!(
        "PARSE BENCHMARK: client frames fed in {READ}-byte reads, median of {rounds} interleaved rounds"
    );
    for i in &inputs {
        println!(
            "  {:<22} {:>9} messages, {:>6} wire bytes each ({} payload)",
            i.name,
            i.n,
            i.wire_len,
            i.payload_len()
        );
    }
    print!("{:<36} {:>12}", "", IMPLS[0].label());
    for imp in &IMPLS[1..] {
        print!(" {:>15} {:>7}", imp.label(), "/ ours");
    }
    println!();
    let row = |label: &str, v: &[f64], decimals: usize| {
        print!("{label:<36} {:>12.*}", decimals, v[0]);
        for x in &v[1..] {
            print!(" {:>15.*} {:>7}", decimals, x, ratio(*x, v[0]));
        }
        println!();
    };
    for (x, i) in inputs.iter().enumerate() {
        let med: Vec<Duration> = times[x].iter().cloned().map(median).collect();
        let ns: Vec<f64> = med
            .iter()
            .map(|d| d.as_nanos() as f64 / i.n as f64)
            .collect();
        let mbs: Vec<f64> = med
            .iter()
            .map(|d| i.bytes(i.n) as f64 / d.as_secs_f64() / 1e6)
            .collect();
        row(&format!("{}: ns/message", i.name), &ns, 1);
        row(&format!("{}: MB/s (wire)", i.name), &mbs, 0);
    }
    let heap: Vec<f64> = idles.iter().map(|i| i.heap).collect();
    let inline: Vec<f64> = idles.iter().map(|i| i.inline as f64).collect();
    let total: Vec<f64> = idles.iter().map(|i| i.heap + i.inline as f64).collect();
    row(
        &format!("idle after 1 msg: heap B/conn (x{conns})"),
        &heap,
        0,
    );
    row("idle: inline B (size_of reader)", &inline, 0);
    row("idle: total B/conn", &total, 0);
    println!("(ratios: library / ours. ns/message and bytes: above 1, ours is faster or smaller;");
    println!(" MB/s: above 1, the library is faster. MB = 10^6 bytes of frames, headers included.");
    println!(
        " tungstenite 4K: read_buffer_size 4096. Heap: live requested bytes, malloc's overhead"
    );
    println!(" not included.)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize) -> [Input; 3] {
        [
            input("publish", PUBLISH_LEN, Shape::Whole, n),
            input("fragmented", PUBLISH_LEN, Shape::Fragmented, n),
            input("large", LIMIT, Shape::Whole, n),
        ]
    }

    #[test]
    fn shapes_have_the_sizes_described() {
        let [p, f, l] = inputs(10);
        assert_eq!((p.payload_len(), p.wire_len), (120, 126));
        // 40 + 40 + 40 bytes of payload, three 6-byte headers, a ping of 2 + 6.
        assert_eq!((f.payload_len(), f.wire_len), (120, 3 * 46 + 8));
        assert_eq!((l.payload_len(), l.wire_len), (LIMIT, LIMIT + 8));
        for i in [&p, &f, &l] {
            assert!(i.payloads.iter().all(|p| std::str::from_utf8(p).is_ok()));
            assert_eq!(i.period.len(), PERIOD * i.wire_len);
        }
        assert!(std::str::from_utf8(&l.payloads[0]).unwrap().contains('è'));
    }

    #[test]
    fn wire_hands_out_reads_of_at_most_4k_across_the_wrap() {
        let period: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let mut w = Wire::new(&period, 12_345);
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = io::Read::read(&mut w, &mut buf).unwrap();
            assert!(n <= READ);
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let want: Vec<u8> = period.iter().cycle().take(12_345).copied().collect();
        assert_eq!(all, want);
    }

    #[test]
    fn every_implementation_reads_every_shape() {
        for i in &inputs(2 * PERIOD + 7) {
            for imp in IMPLS {
                let t = imp
                    .run(i, i.n, true)
                    .unwrap_or_else(|e| panic!("{imp:?}: {e}"));
                assert_eq!(t.texts, i.n);
            }
        }
    }

    #[test]
    fn a_wrong_byte_fails_the_run() {
        let mut i = input("publish", PUBLISH_LEN, Shape::Whole, 50);
        // The last byte of the 10th message, under its mask: still valid UTF-8 for most
        // values, but not the `}` that was sent.
        let at = 10 * i.wire_len - 1;
        i.period[at] ^= 0x01;
        for imp in IMPLS {
            assert!(imp.run(&i, i.n, false).is_err(), "{imp:?}");
        }
    }

    #[test]
    fn a_short_count_fails_the_run() {
        let i = input("publish", PUBLISH_LEN, Shape::Whole, 50);
        let t = Tally {
            texts: 49,
            text_bytes: 49 * 120,
            pings: 0,
        };
        assert!(t.check(&i, 50, &Wire::new(&i.period, 0)).is_err());
    }

    #[test]
    fn idle_memory_is_measured_for_all() {
        let i = input("publish", PUBLISH_LEN, Shape::Whole, 1);
        let mut frame = Vec::new();
        client_frame(&mut frame, true, 0x1, &i.payloads[0], [1, 2, 3, 4]);
        for imp in IMPLS {
            let idle = idle(imp, 10, &frame, &i).unwrap();
            assert!(idle.inline > 0);
            if imp != Impl::Ours {
                // Each library keeps a read buffer of at least 4 KiB.
                assert!(idle.heap >= 4096.0, "{imp:?}: {}", idle.heap);
            }
        }
    }
}
