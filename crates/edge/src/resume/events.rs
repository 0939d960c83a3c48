//! Cutting a stream into numbered events: SSE events (ended by a blank line) get an `id: N`
//! line in front, so `EventSource` and `fetch-event-source` send `Last-Event-ID: N` when they
//! reconnect; NDJSON lines pass unchanged and are numbered by count. Numbers start at 1, so a
//! cursor `N` means "I have events 1..=N" and 0 means "nothing yet".
//!
//! Per chunk the work is one scan of its bytes; an event split across chunks waits in `partial`
//! until its end arrives (engines write whole events, so in practice nothing waits).

use bytes::{Buf, Bytes, BytesMut};

/// How the stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`: events get `id:` lines.
    Sse,
    /// `application/x-ndjson`: one event per line, bytes unchanged.
    Ndjson,
}

/// Numbers a stream's events as its chunks pass.
#[derive(Debug)]
pub struct Framer {
    framing: Framing,
    /// The start of an event whose end has not arrived yet.
    partial: BytesMut,
    /// The number the next event gets.
    next: u64,
}

/// One chunk's worth of whole events: the bytes for the client (events back to back) and where
/// each event ends in them.
#[derive(Debug, Default)]
pub struct Cut {
    /// What the client gets for this chunk.
    pub bytes: Bytes,
    /// End offset in `bytes` of each event, in order.
    pub ends: Vec<usize>,
    /// The number of the first event.
    pub first: u64,
}

impl Cut {
    /// The events, each its own slice of `bytes`.
    pub fn events(&self) -> impl Iterator<Item = Bytes> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| self.bytes.slice(s..e))
    }
}

impl Framer {
    /// A framer for a stream that starts now.
    pub fn new(framing: Framing) -> Self {
        Framer {
            framing,
            partial: BytesMut::new(),
            next: 1,
        }
    }

    /// The framing.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Bytes held back: the start of an event whose end has not arrived.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Hands over what is held back, as it is (no id): the stream stops being numbered.
    pub fn take_held(&mut self) -> Bytes {
        std::mem::take(&mut self.partial).freeze()
    }

    /// The whole events `chunk` completes (with what was held back before it); `end`: the
    /// stream ends here, so an unfinished last event is let out as it is.
    pub fn feed(&mut self, chunk: &Bytes, end: bool) -> Cut {
        let first = self.next;
        if self.framing == Framing::Ndjson && self.partial.is_empty() {
            return self.lines(chunk, end, first);
        }
        // Only the new bytes are scanned (less the lookahead a blank line needs); what was held
        // back is not copied again.
        let resume_at = self.partial.len().saturating_sub(2);
        self.partial.extend_from_slice(chunk);
        let buf = &self.partial[..];
        let mut stops = Vec::new();
        let mut scan = resume_at;
        let mut last = 0;
        while let Some(pos) = memchr::memchr(b'\n', &buf[scan..]) {
            let nl = scan + pos;
            scan = nl + 1;
            let stop = match self.framing {
                Framing::Ndjson => Some(nl + 1),
                Framing::Sse => blank_line_after(buf, nl),
            };
            if let Some(stop) = stop {
                stops.push(stop);
                last = stop;
                scan = stop;
            }
        }
        if end && last < buf.len() {
            stops.push(buf.len());
            last = buf.len();
        }
        let ids = if self.framing == Framing::Sse {
            24 * stops.len()
        } else {
            0
        };
        let mut out = BytesMut::with_capacity(last + ids);
        let mut ends = Vec::with_capacity(stops.len());
        let mut from = 0;
        for stop in stops {
            emit(self.framing, self.next, &buf[from..stop], &mut out);
            ends.push(out.len());
            self.next += 1;
            from = stop;
        }
        self.partial.advance(last);
        Cut {
            bytes: out.freeze(),
            ends,
            first,
        }
    }

    /// NDJSON with nothing held back: the chunk itself is the client's bytes (no copy).
    fn lines(&mut self, chunk: &Bytes, end: bool, first: u64) -> Cut {
        let mut ends: Vec<usize> = memchr::memchr_iter(b'\n', chunk).map(|p| p + 1).collect();
        let whole = ends.last().copied().unwrap_or(0);
        if end && whole < chunk.len() {
            ends.push(chunk.len());
        }
        let cut = ends.last().copied().unwrap_or(0);
        self.partial.extend_from_slice(&chunk[cut..]);
        self.next += ends.len() as u64;
        Cut {
            bytes: chunk.slice(..cut),
            ends,
            first,
        }
    }
}

/// Writes event `n` into `out`. SSE: our `id: n` goes last in the event, just before the blank
/// line that ends it, so it wins over an `id:` the engine may have sent (the last one counts).
fn emit(framing: Framing, n: u64, event: &[u8], out: &mut BytesMut) {
    if framing == Framing::Ndjson {
        out.extend_from_slice(event);
        return;
    }
    let mut digits = [0; 20];
    let blank = if event.ends_with(b"\r\n\r\n") || event.ends_with(b"\n\r\n") {
        2
    } else if event.ends_with(b"\n\n") {
        1
    } else {
        // An unfinished last event: its id goes first (a blank line of ours would end it).
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(fmt_u64(n, &mut digits));
        out.extend_from_slice(b"\n");
        out.extend_from_slice(event);
        return;
    };
    let (body, end) = event.split_at(event.len() - blank);
    out.extend_from_slice(body);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(fmt_u64(n, &mut digits));
    out.extend_from_slice(b"\n");
    out.extend_from_slice(end);
}

/// Where the blank line that ends an SSE event stops, when the line ending at `nl` is followed
/// by one (`\n` or `\r\n`); `None` when it is not, or not yet known.
fn blank_line_after(buf: &[u8], nl: usize) -> Option<usize> {
    match buf.get(nl + 1..) {
        Some([b'\n', ..]) => Some(nl + 2),
        Some([b'\r', b'\n', ..]) => Some(nl + 3),
        _ => None,
    }
}

/// `n` in decimal, written into `buf` (20 digits hold any u64).
fn fmt_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &mut Framer, chunks: &[&[u8]]) -> (Vec<u8>, Vec<(u64, Bytes)>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let cut = f.feed(&Bytes::copy_from_slice(c), i + 1 == chunks.len());
            out.extend_from_slice(&cut.bytes);
            for (k, e) in cut.events().enumerate() {
                events.push((cut.first + k as u64, e));
            }
        }
        (out, events)
    }

    #[test]
    fn sse_events_get_ids_wherever_the_chunks_split() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n: keepalive\n\ndata: [DONE]\n\n";
        let want = "data: {\"a\":1}\nid: 1\n\ndata: {\"b\":2}\nid: 2\n\n: keepalive\nid: 3\n\ndata: [DONE]\nid: 4\n\n";
        for size in 1..stream.len() {
            let mut f = Framer::new(Framing::Sse);
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let (out, events) = all(&mut f, &chunks);
            assert_eq!(String::from_utf8(out).unwrap(), want, "chunks of {size}");
            assert_eq!(events.len(), 4);
            assert_eq!(
                events[1],
                (2, Bytes::from_static(b"data: {\"b\":2}\nid: 2\n\n"))
            );
        }
        let mut f = Framer::new(Framing::Sse);
        let (out, _) = all(&mut f, &[b"data: x\r\n\r\ndata: y\r\n\r\n"]);
        assert_eq!(out, b"data: x\r\nid: 1\n\r\ndata: y\r\nid: 2\n\r\n");
        // The engine's own id is overridden: ours is the last in the event.
        let mut f = Framer::new(Framing::Sse);
        let (out, _) = all(&mut f, &[b"id: abc\ndata: x\n\n"]);
        assert_eq!(out, b"id: abc\ndata: x\nid: 1\n\n");
        // A stream cut short: its unfinished event is let out at the end.
        let mut f = Framer::new(Framing::Sse);
        let (out, events) = all(&mut f, &[b"data: x\n\ndata: y"]);
        assert_eq!(out, b"data: x\nid: 1\n\nid: 2\ndata: y");
        assert_eq!(events.len(), 2);
        let mut big = [0; 20];
        assert_eq!(fmt_u64(u64::MAX, &mut big), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn an_unfinished_event_is_held_until_handed_over() {
        let mut f = Framer::new(Framing::Sse);
        let cut = f.feed(
            &Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"big\":\""),
            false,
        );
        assert_eq!(cut.bytes, Bytes::from_static(b"data: {\"a\":1}\nid: 1\n\n"));
        assert_eq!(f.held(), 14);
        assert_eq!(f.take_held(), Bytes::from_static(b"data: {\"big\":\""));
        assert_eq!(f.held(), 0);
    }

    #[test]
    fn ndjson_lines_pass_unchanged_and_are_counted() {
        let stream = b"{\"a\":1}\n{\"b\":2}\n{\"done\":true}\n";
        for size in 1..stream.len() {
            let mut f = Framer::new(Framing::Ndjson);
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let (out, events) = all(&mut f, &chunks);
            assert_eq!(out, stream, "chunks of {size}");
            let lines: Vec<_> = events.iter().map(|(n, e)| (*n, e.clone())).collect();
            assert_eq!(lines[2], (3, Bytes::from_static(b"{\"done\":true}\n")));
            assert_eq!(lines.len(), 3);
        }
    }
}
