//! Continuing a partial answer. A mid-stream failover re-issues the request with the text
//! generated so far: a chat whose last message is that partial assistant answer with
//! `continue_final_message: true` (vLLM), or a completion whose prompt ends with it. The
//! simulator picks its deterministic text up where the partial one ends, so tests can check
//! that a spliced answer equals an uninterrupted one, word for word.

use crate::tokens::{estimate_tokens, hash_bytes, token_text};

/// Where a continuation's text starts: the reply it continues (its seed) and how many of that
/// reply's tokens were already given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Seed of the reply being continued (the hash of the original prompt).
    pub seed: u64,
    /// Tokens of that reply already generated.
    pub offset: u32,
}

/// How many leading tokens of the reply seeded by `seed` spell exactly `text`; `None` when
/// `text` is not such a prefix. At most `text.len()` steps: every token has a byte.
pub(crate) fn tokens_spelling(seed: u64, text: &[u8]) -> Option<u32> {
    let mut rest = text;
    let mut i = 0u32;
    while !rest.is_empty() {
        rest = rest.strip_prefix(token_text(seed, i).as_bytes())?;
        i += 1;
    }
    Some(i)
}

/// A chat continuing its final (assistant) message `partial` after the prompt `original` (the
/// other messages' text): the original reply's text goes on after the tokens `partial` spells.
/// A partial answer that is not a prefix of the simulator's reply (text from another engine)
/// still continues deterministically, past an estimate of its length.
pub(crate) fn chat(original: &[u8], partial: &[u8]) -> Resume {
    let seed = hash_bytes(original);
    let offset =
        tokens_spelling(seed, partial).unwrap_or_else(|| estimate_tokens(partial.len()).max(1));
    Resume { seed, offset }
}

/// A completion whose prompt is an original prompt followed by the start of the simulator's
/// reply to it: the split where the rest spells that reply's first tokens (a reply starts with
/// "Hello"), the leftmost one. `None` for an ordinary prompt.
pub(crate) fn completion(prompt: &[u8]) -> Option<Resume> {
    let first = token_text(0, 0).as_bytes();
    (0..prompt.len())
        .filter(|&j| prompt[j..].starts_with(first))
        .find_map(|j| {
            let seed = hash_bytes(&prompt[..j]);
            tokens_spelling(seed, &prompt[j..]).map(|offset| Resume { seed, offset })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(prompt: &[u8], n: u32) -> String {
        let seed = hash_bytes(prompt);
        (0..n).map(|i| token_text(seed, i)).collect()
    }

    #[test]
    fn a_chat_continues_where_its_partial_answer_ends() {
        let whole = reply(b"hi there", 8);
        let part = reply(b"hi there", 3);
        let r = chat(b"hi there", part.as_bytes());
        assert_eq!(r.offset, 3);
        let rest: String = (r.offset..8).map(|i| token_text(r.seed, i)).collect();
        assert_eq!(format!("{part}{rest}"), whole);
        // Text from elsewhere continues too, deterministically.
        assert_eq!(chat(b"hi there", b"Bonjour").offset, 2);
        assert_eq!(chat(b"hi there", b"").offset, 0);
    }

    #[test]
    fn a_completion_prompt_is_split_at_the_reply_it_carries() {
        let prompt = b"Say hello: Hello in a prompt";
        let part = reply(prompt, 4);
        let mut carried = prompt.to_vec();
        carried.extend_from_slice(part.as_bytes());
        assert_eq!(
            completion(&carried),
            Some(Resume {
                seed: hash_bytes(prompt),
                offset: 4
            })
        );
        assert_eq!(completion(b"an ordinary prompt"), None);
        assert_eq!(
            completion(prompt),
            None,
            "a Hello in the prompt is not a reply"
        );
    }
}
