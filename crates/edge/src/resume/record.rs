//! One resumable stream's buffer: its numbered events (the newest up to the route's `buffer`
//! bytes), who is reading it, and how it ended. The stream's own request appends; resumes read
//! from a cursor and wait for more. The lock is held only to copy handles in or out, never
//! across an await.

use super::events::Framing;
use super::id::StreamId;
use super::Policy;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// The engine is still answering.
    Live,
    /// The answer ended (whole, or with the terminal error event).
    Ended,
    /// Cancelled by its caller.
    Cancelled,
    /// Nobody came back within the grace window; the engine was stopped.
    Expired,
}

/// Who may resume a stream: a keyed hash of the caller's key (or tenant), never the key.
pub type Owner = u64;

/// A read from a cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The events after the cursor (maybe none yet), and the cursor after them.
    Events(Vec<Bytes>, u64),
    /// Nothing more will come: the stream is over and everything was read.
    Over(Life),
    /// The events after the cursor were dropped from the buffer.
    Gone {
        /// The oldest event still held.
        oldest: u64,
    },
    /// The cursor is past the last event.
    Ahead {
        /// The last event so far.
        last: u64,
    },
}

#[derive(Debug)]
struct Inner {
    events: VecDeque<Bytes>,
    /// Number of `events[0]`.
    first: u64,
    bytes: usize,
    /// Clients attached now (the stream's own request while it lasts, and resumes).
    readers: usize,
    /// Since when nobody is attached (`None` while someone is).
    alone_since: Option<Instant>,
    life: Life,
    /// The stream's own request wrote its last bytes (its end, or the terminal error event):
    /// readers that caught up are done only then.
    sealed: bool,
}

/// One resumable stream.
#[derive(Debug)]
pub struct Record {
    /// Its id.
    pub id: StreamId,
    /// Who made it.
    pub owner: Owner,
    /// SSE or NDJSON.
    pub framing: Framing,
    /// The engine's `Content-Type`, for resumes.
    pub content_type: http::HeaderValue,
    /// The route's settings when it started.
    pub policy: Policy,
    /// The route it was made on: a resume must come through the same one.
    pub route: String,
    /// Bytes of the node's budget this stream holds: its `buffer` while live, what it keeps
    /// once sealed.
    pub reserved: std::sync::atomic::AtomicU64,
    inner: Mutex<Inner>,
    /// Bumped when events arrive or the stream ends (resumes wait on it).
    data: watch::Sender<()>,
    /// Bumped when readers come and go, or the stream is cancelled (the grace timer waits on it).
    control: watch::Sender<()>,
}

impl Record {
    /// A stream starting now, its request attached.
    pub fn new(
        id: StreamId,
        owner: Owner,
        framing: Framing,
        content_type: http::HeaderValue,
        policy: Policy,
        route: String,
    ) -> Self {
        Record {
            id,
            owner,
            framing,
            content_type,
            policy,
            route,
            reserved: std::sync::atomic::AtomicU64::new(policy.buffer as u64),
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                first: 1,
                bytes: 0,
                readers: 1,
                alone_since: None,
                life: Life::Live,
                sealed: false,
            }),
            data: watch::channel(()).0,
            control: watch::channel(()).0,
        }
    }

    /// Appends events numbered from `first` on; the oldest are dropped past the route's
    /// `buffer`. Returns the change in buffered bytes.
    pub fn push(&self, first: u64, events: impl Iterator<Item = Bytes>) -> i64 {
        let mut g = self.inner.lock();
        let before = g.bytes as i64;
        if g.events.is_empty() {
            g.first = first;
        }
        for e in events {
            g.bytes += e.len();
            g.events.push_back(e);
        }
        while g.bytes > self.policy.buffer && g.events.len() > 1 {
            if let Some(old) = g.events.pop_front() {
                g.bytes -= old.len();
                g.first += 1;
            }
        }
        let delta = g.bytes as i64 - before;
        drop(g);
        self.data.send_modify(|_| {});
        delta
    }

    /// The events after `cursor`.
    pub fn read(&self, cursor: u64) -> Read {
        let g = self.inner.lock();
        // `first` is at least 1, so `last` cannot underflow; comparisons avoid `cursor + 1`.
        let last = g.first + g.events.len() as u64 - 1;
        if cursor > last {
            return Read::Ahead { last };
        }
        if cursor < g.first - 1 {
            return Read::Gone { oldest: g.first };
        }
        let from = (cursor + 1 - g.first) as usize;
        if from == g.events.len() && g.sealed {
            return Read::Over(g.life);
        }
        Read::Events(g.events.range(from..).cloned().collect(), last)
    }

    /// The stream's own request is done writing: a reader that has everything is finished.
    /// Returns the bytes held (what the stream keeps reserved from now on).
    pub fn seal(&self) -> usize {
        let mut g = self.inner.lock();
        g.sealed = true;
        let bytes = g.bytes;
        drop(g);
        self.data.send_modify(|_| {});
        bytes
    }

    /// Ends the stream as expired when nobody has been attached for the whole grace window;
    /// decided and done under one lock, so a resume attaching meanwhile wins.
    fn expire_if_abandoned(&self) -> bool {
        let mut g = self.inner.lock();
        let abandoned = g.life == Life::Live
            && g.readers == 0
            && g.alone_since
                .is_some_and(|t| t + self.policy.grace <= Instant::now());
        if abandoned {
            g.life = Life::Expired;
        }
        drop(g);
        if abandoned {
            self.data.send_modify(|_| {});
            self.control.send_modify(|_| {});
        }
        abandoned
    }

    /// A client attached (a resume); returns whether the stream was live with nobody attached.
    pub fn attach(&self) -> bool {
        let mut g = self.inner.lock();
        let was_alone = g.readers == 0 && g.life == Life::Live;
        g.readers += 1;
        g.alone_since = None;
        drop(g);
        self.control.send_modify(|_| {});
        was_alone
    }

    /// A client left; returns whether the stream is now unattended and still live.
    pub fn leave(&self) -> bool {
        let mut g = self.inner.lock();
        g.readers = g.readers.saturating_sub(1);
        let alone = g.readers == 0;
        if alone {
            g.alone_since = Some(Instant::now());
        }
        let live = g.life == Life::Live;
        drop(g);
        self.control.send_modify(|_| {});
        alone && live
    }

    /// Ends the stream as `life` (the first end wins): `Some(whether nobody was attached)` when
    /// this call ended it.
    pub fn end(&self, life: Life) -> Option<bool> {
        let mut g = self.inner.lock();
        if g.life != Life::Live {
            return None;
        }
        g.life = life;
        let alone = g.readers == 0;
        drop(g);
        self.data.send_modify(|_| {});
        self.control.send_modify(|_| {});
        Some(alone)
    }

    /// How the stream stands.
    pub fn life(&self) -> Life {
        self.inner.lock().life
    }

    /// Bytes buffered now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Whether nobody is attached.
    pub fn unattended(&self) -> bool {
        self.inner.lock().readers == 0
    }

    /// A receiver that wakes when events arrive or the stream ends.
    pub fn data(&self) -> watch::Receiver<()> {
        self.data.subscribe()
    }

    /// Resolves when the engine must stop: the stream was cancelled, or nobody was attached for
    /// the whole grace window (the stream is then marked expired). Returns how it ended.
    pub async fn released(&self) -> Life {
        let mut rx = self.control.subscribe();
        loop {
            let deadline = {
                let g = self.inner.lock();
                match g.life {
                    Life::Live => g.alone_since.map(|t| t + self.policy.grace),
                    other => return other,
                }
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            if self.expire_if_abandoned() {
                                return Life::Expired;
                            }
                        }
                        r = rx.changed() => if r.is_err() { return self.life() },
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        return self.life();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(buffer: usize, grace: Duration) -> Record {
        let policy = Policy {
            grace,
            buffer,
            keep: Duration::from_secs(60),
        };
        Record::new(
            StreamId::new(None),
            7,
            Framing::Sse,
            http::HeaderValue::from_static("text/event-stream"),
            policy,
            "r".into(),
        )
    }

    fn ev(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn reads_replay_from_a_cursor_and_old_cursors_are_gone() {
        let r = record(10, Duration::from_secs(30));
        assert_eq!(r.read(0), Read::Events(vec![], 0));
        r.push(1, [ev("aaaa"), ev("bbbb")].into_iter());
        assert_eq!(r.read(0), Read::Events(vec![ev("aaaa"), ev("bbbb")], 2));
        assert_eq!(r.read(1), Read::Events(vec![ev("bbbb")], 2));
        assert_eq!(r.read(2), Read::Events(vec![], 2));
        assert_eq!(r.read(3), Read::Ahead { last: 2 });
        // Past 10 bytes the oldest goes: cursor 0 can no longer be served.
        assert_eq!(r.push(3, [ev("cccc")].into_iter()), 0);
        assert_eq!(r.read(0), Read::Gone { oldest: 2 });
        assert_eq!(r.read(1), Read::Events(vec![ev("bbbb"), ev("cccc")], 3));
        assert_eq!(r.end(Life::Ended), Some(false));
        assert_eq!(r.end(Life::Cancelled), None);
        assert_eq!(r.read(1), Read::Events(vec![ev("bbbb"), ev("cccc")], 3));
        // Ended, but its request has not written its last bytes yet: a reader waits.
        assert_eq!(r.read(3), Read::Events(vec![], 3));
        assert_eq!(r.seal(), 8);
        assert_eq!(r.read(3), Read::Over(Life::Ended));
        assert_eq!(r.read(u64::MAX), Read::Ahead { last: 3 });
    }

    #[tokio::test(start_paused = true)]
    async fn the_engine_is_released_after_the_grace_window_unless_someone_comes_back() {
        let r = std::sync::Arc::new(record(1000, Duration::from_secs(30)));
        let t0 = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.released().await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!waiter.is_finished(), "attached: never released");
        assert!(r.leave());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(r.attach());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!waiter.is_finished(), "came back within the window");
        assert!(r.leave());
        assert_eq!(waiter.await.unwrap(), Life::Expired);
        assert!(t0.elapsed() >= Duration::from_secs(170));
        assert_eq!(r.life(), Life::Expired);

        let r = std::sync::Arc::new(record(1000, Duration::from_secs(30)));
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.released().await }
        });
        tokio::task::yield_now().await;
        r.end(Life::Cancelled);
        assert_eq!(waiter.await.unwrap(), Life::Cancelled);
    }
}
