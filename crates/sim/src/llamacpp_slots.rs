//! llama-server's slots: which one a request gets (the free slot whose KV cache shares the
//! longest prefix with the prompt, more than a tenth of it; else the least recently used), how
//! many prompt tokens that cache spares, and what `GET /slots` shows of each.

use parking_lot::Mutex;

use super::tokens::estimate_tokens;

/// What a slot's current (or last) task looks like on `/slots`.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    /// llama-server's task id.
    pub id: u64,
    /// Prompt tokens.
    pub n_prompt: u32,
    /// Prompt tokens reused from the slot's cache.
    pub n_cached: u32,
    /// Tokens generated so far.
    pub n_decoded: u32,
    /// The request's limit (-1: none).
    pub n_predict: i64,
    /// Streamed request.
    pub stream: bool,
    /// A chat request (its chat format differs).
    pub chat: bool,
    /// The request's temperature, when it set one.
    pub temperature: Option<f64>,
}

#[derive(Debug, Default)]
struct Slot {
    busy: bool,
    last_used: u64,
    /// What the slot's KV cache holds: its last prompt and the text generated after it.
    held: Vec<u8>,
    /// Tokens the cache holds.
    held_tokens: u32,
    task: Option<Task>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: Vec<Slot>,
    clock: u64,
    next_task: u64,
}

/// The slots of one simulated llama-server (as many as `max_concurrent`).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    inner: Mutex<Inner>,
}

/// One slot as `/slots` shows it.
#[derive(Debug, Clone)]
pub(crate) struct SlotView {
    pub id: usize,
    pub busy: bool,
    /// Tokens in the slot's cache.
    pub n_tokens: u32,
    pub task: Option<Task>,
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Slots {
    /// Takes a free slot for a prompt of `n_prompt` tokens; returns the slot id and the prompt
    /// tokens its cache spares (at least one token is always evaluated).
    pub(crate) fn acquire(&self, n_slots: usize, prompt: &[u8], mut task: Task) -> (usize, u32) {
        let mut g = self.inner.lock();
        let n = n_slots.max(1);
        if g.slots.len() < n {
            g.slots.resize_with(n, Slot::default);
        }
        let free = |s: &&(usize, &Slot)| !s.1.busy;
        let best = g
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < n)
            .collect::<Vec<_>>();
        let by_prefix = best
            .iter()
            .filter(free)
            .map(|(i, s)| (*i, common_prefix(&s.held, prompt)))
            .max_by_key(|(_, l)| *l)
            .filter(|(_, l)| *l * 10 > prompt.len() && *l > 0);
        let id = by_prefix.map(|(i, _)| i).or_else(|| {
            best.iter()
                .filter(free)
                .min_by_key(|(i, s)| (s.last_used, usize::MAX - i))
                .map(|(i, _)| *i)
        });
        // The scheduler granted a slot, so one is free; a resized-away one still works.
        let id = id.unwrap_or(0);
        let lcp = by_prefix.filter(|(i, _)| *i == id).map_or(0, |(_, l)| l);
        let cached = if lcp >= 4 {
            estimate_tokens(lcp).min(task.n_prompt.saturating_sub(1))
        } else {
            0
        };
        task.n_cached = cached;
        g.next_task += 1;
        task.id = g.next_task;
        g.clock += 1;
        let clock = g.clock;
        if let Some(s) = g.slots.get_mut(id) {
            s.busy = true;
            s.last_used = clock;
            s.held = prompt.to_vec();
            s.held_tokens = task.n_prompt;
            s.task = Some(task);
        }
        (id, cached)
    }

    /// Slot `id` generated `text`, `n` tokens.
    pub(crate) fn generated(&self, id: usize, text: &str, n: u32) {
        let mut g = self.inner.lock();
        if let Some(s) = g.slots.get_mut(id) {
            s.held.extend_from_slice(text.as_bytes());
            s.held_tokens += n;
            if let Some(t) = &mut s.task {
                t.n_decoded += n;
            }
        }
    }

    /// Slot `id` is free again (its cache stays).
    pub(crate) fn release(&self, id: usize) {
        let mut g = self.inner.lock();
        g.clock += 1;
        let clock = g.clock;
        if let Some(s) = g.slots.get_mut(id) {
            s.busy = false;
            s.last_used = clock;
        }
    }

    /// Counts a task id used by something else (llama-server numbers every task).
    pub(crate) fn next_task_id(&self) -> u64 {
        let mut g = self.inner.lock();
        g.next_task += 1;
        g.next_task
    }

    /// The first `n` slots.
    pub(crate) fn snapshot(&self, n: usize) -> Vec<SlotView> {
        let g = self.inner.lock();
        (0..n)
            .map(|id| match g.slots.get(id) {
                Some(s) => SlotView {
                    id,
                    busy: s.busy,
                    // The last generated token is not in the cache yet.
                    n_tokens: s.held_tokens.saturating_sub(1),
                    task: s.task.clone(),
                },
                None => SlotView {
                    id,
                    busy: false,
                    n_tokens: 0,
                    task: None,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u32) -> Task {
        Task {
            id: 0,
            n_prompt: n,
            n_cached: 0,
            n_decoded: 0,
            n_predict: -1,
            stream: true,
            chat: true,
            temperature: None,
        }
    }

    #[test]
    fn a_repeated_prompt_reuses_its_slot() {
        let s = Slots::default();
        let p = b"You are terse. Say hello, please, at length".as_slice();
        let (a, cached) = s.acquire(2, p, task(12));
        assert_eq!(cached, 0);
        s.generated(a, " after", 1);
        s.release(a);
        let (b, cached) = s.acquire(2, p, task(12));
        assert_eq!(b, a, "same prefix, same slot");
        assert_eq!(cached, 11, "all but the one token always evaluated");
        // Busy: another request takes the other slot, least recently used.
        let (c, cached) = s.acquire(2, b"something else entirely", task(6));
        assert_ne!(c, b);
        assert_eq!(cached, 0);
        let v = s.snapshot(2);
        assert!(v.iter().all(|x| x.busy));
        assert_eq!(v[a].task.as_ref().map(|t| t.n_cached), Some(11));
    }
}
