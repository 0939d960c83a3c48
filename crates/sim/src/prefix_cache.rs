//! A per-engine prefix cache modelled on vLLM's automatic prefix caching (v1 `KVCacheManager`).
//!
//! The prompt (the simulator's rendering of it: about four bytes a token) is cut into full
//! blocks of [`BLOCK_TOKENS`] tokens; each block's hash is chained on the previous block's, so a
//! block can only be found when everything before it is identical. A request's hit is the number
//! of leading blocks already cached, capped like vLLM's `max_cache_hit_length = num_tokens - 1`
//! (the last token is always computed, for its logits). The request's blocks are then cached, in
//! an LRU bounded by `SimConfig::prefix_cache_blocks`; they are touched last block first, so the
//! blocks a prefix starts with are the last to go (vLLM frees a request's blocks in reverse order
//! for the same reason). Counting follows `get_computed_blocks`: queries += prompt tokens,
//! hits += cached tokens.
//!
//! Blocks are looked up and cached when the request is admitted, not when its prefill ends: two
//! requests with the same prefix that arrive together both hit, where vLLM would compute the
//! second one's blocks again only if it scheduled both in the same step.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use parking_lot::Mutex;

/// Tokens per KV-cache block (vLLM's default `--block-size`).
pub(crate) const BLOCK_TOKENS: u32 = 16;
/// Prompt bytes per block: the simulator counts about four bytes a token (`estimate_tokens`).
const BLOCK_BYTES: usize = BLOCK_TOKENS as usize * 4;

/// One engine's cached blocks.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    /// Most blocks kept (0: prefix caching off, every lookup misses).
    capacity: usize,
    lru: Mutex<Lru>,
}

/// Block hashes with their last use; `order` holds (use, hash) oldest first and may hold stale
/// pairs (a block used again since), skipped on eviction and dropped when it grows too long.
#[derive(Debug, Default)]
struct Lru {
    clock: u64,
    last_use: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
}

impl Lru {
    fn touch(&mut self, block: u64) {
        self.clock += 1;
        self.last_use.insert(block, self.clock);
        self.order.push_back((self.clock, block));
    }

    fn evict_to(&mut self, capacity: usize) {
        while self.last_use.len() > capacity {
            let Some((used, block)) = self.order.pop_front() else {
                break;
            };
            if self.last_use.get(&block) == Some(&used) {
                self.last_use.remove(&block);
            }
        }
        // Stale pairs pile up when the same blocks are hit again and again: compact once they
        // outnumber the live ones, which keeps the queue O(capacity) at O(1) amortized cost.
        if self.order.len() > 2 * self.last_use.len() + 64 {
            let live = &self.last_use;
            self.order.retain(|(used, b)| live.get(b) == Some(used));
        }
    }
}

impl PrefixCache {
    /// A cache of at most `capacity` blocks.
    pub(crate) fn new(capacity: usize) -> Self {
        PrefixCache {
            capacity,
            lru: Mutex::new(Lru::default()),
        }
    }

    /// Looks `prompt` (of `prompt_tokens` tokens as the engine counts them) up and caches its
    /// full blocks; returns the tokens found cached (a multiple of [`BLOCK_TOKENS`]).
    pub(crate) fn lookup_and_insert(&self, prompt: &[u8], prompt_tokens: u32) -> u32 {
        if self.capacity == 0 {
            return 0;
        }
        let hashes = block_hashes(prompt);
        let max_hit = (prompt_tokens.saturating_sub(1) / BLOCK_TOKENS) as usize;
        let mut lru = self.lru.lock();
        let hit = hashes
            .iter()
            .take(max_hit)
            .take_while(|h| lru.last_use.contains_key(h))
            .count();
        for &h in hashes.iter().rev() {
            lru.touch(h);
        }
        lru.evict_to(self.capacity);
        drop(lru);
        // `hit` <= max_hit <= u32::MAX / BLOCK_TOKENS, so this cannot overflow.
        hit as u32 * BLOCK_TOKENS
    }

    /// Blocks cached now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lru.lock().last_use.len()
    }
}

/// Chained hashes of the prompt's full blocks: block `i`'s hash covers blocks `0..=i`.
fn block_hashes(prompt: &[u8]) -> Vec<u64> {
    let mut parent = 0u64;
    prompt
        .chunks_exact(BLOCK_BYTES)
        .map(|block| {
            let mut h = DefaultHasher::new();
            parent.hash(&mut h);
            block.hash(&mut h);
            parent = h.finish();
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(p: &[u8]) -> u32 {
        crate::tokens::estimate_tokens(p.len())
    }

    #[test]
    fn a_repeated_prefix_hits_in_whole_blocks_and_never_the_last_token() {
        let c = PrefixCache::new(1000);
        let a = vec![b'a'; BLOCK_BYTES * 3];
        assert_eq!(c.lookup_and_insert(&a, tokens(&a)), 0, "cold cache");
        // The same prompt again: all but the block holding the last token.
        assert_eq!(c.lookup_and_insert(&a, tokens(&a)), 2 * BLOCK_TOKENS);
        // A longer prompt with the same start: every block of the first one.
        let mut b = a.clone();
        b.extend_from_slice(&[b'b'; BLOCK_BYTES * 2 + 10]);
        assert_eq!(c.lookup_and_insert(&b, tokens(&b)), 3 * BLOCK_TOKENS);
        // One changed byte in block 1 cuts the chain there, even though block 2 is equal.
        let mut d = b.clone();
        d[BLOCK_BYTES + 5] = b'x';
        assert_eq!(c.lookup_and_insert(&d, tokens(&d)), BLOCK_TOKENS);
        // Shorter than one block: nothing to cache or hit.
        assert_eq!(c.lookup_and_insert(b"hi", tokens(b"hi")), 0);
    }

    #[test]
    fn bounded_lru_keeps_the_recent_prefixes() {
        let c = PrefixCache::new(8);
        let p = |x: u8| vec![x; BLOCK_BYTES * 4 + 1];
        for x in 0..3u8 {
            c.lookup_and_insert(&p(x), tokens(&p(x)));
            assert!(c.len() <= 8);
        }
        // Prompts 1 and 2 (8 blocks) are cached; prompt 0 was evicted.
        assert_eq!(c.lookup_and_insert(&p(2), tokens(&p(2))), 4 * BLOCK_TOKENS);
        assert_eq!(c.lookup_and_insert(&p(0), tokens(&p(0))), 0);
        // A hot prefix touched again and again never makes the queue grow without bound.
        for _ in 0..10_000 {
            c.lookup_and_insert(&p(0), tokens(&p(0)));
        }
        assert!(c.lru.lock().order.len() < 200);
        let off = PrefixCache::new(0);
        assert_eq!(off.lookup_and_insert(&p(0), tokens(&p(0))), 0);
        assert_eq!(off.lookup_and_insert(&p(0), tokens(&p(0))), 0);
    }
}
