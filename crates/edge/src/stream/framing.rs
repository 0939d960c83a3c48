//! Splits a byte stream into lines across chunk boundaries, copying only a line that straddles
//! two chunks.

/// Longest line kept for classification; longer ones (huge tool-call arguments, say) are skipped
/// so one stream cannot grow the tap without bound.
pub const MAX_LINE: usize = 1 << 20;

/// Carries the unfinished tail of the previous chunk.
#[derive(Debug, Default)]
pub struct LineFramer {
    partial: Vec<u8>,
    skipping: bool,
}

impl LineFramer {
    /// Nothing of an unfinished line is held (or being skipped).
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty() && !self.skipping
    }

    /// Calls `on_line` for each complete line (without `\n` or `\r\n`).
    pub fn feed(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        while let Some(pos) = memchr::memchr(b'\n', chunk) {
            let (head, rest) = (&chunk[..pos], &chunk[pos + 1..]);
            // One rule for every line, however it was chunked: longer than MAX_LINE is skipped.
            if self.skipping || self.partial.len() + head.len() > MAX_LINE {
                self.skipping = false;
                self.partial.clear();
            } else if self.partial.is_empty() {
                on_line(trim_cr(head));
            } else {
                self.partial.extend_from_slice(head);
                on_line(trim_cr(&self.partial));
                self.partial.clear();
            }
            chunk = rest;
        }
        if chunk.is_empty() || self.skipping {
            return;
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            self.partial = Vec::new();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut f = LineFramer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, |l| out.push(l.to_vec()));
        }
        out
    }

    #[test]
    fn lines_join_across_chunks() {
        assert_eq!(
            lines(&[b"ab", b"c\nde\r\n", b"f", b"\n"]),
            vec![b"abc".to_vec(), b"de".to_vec(), b"f".to_vec()]
        );
        assert_eq!(lines(&[b"\n\n"]), vec![Vec::<u8>::new(), Vec::new()]);
    }

    #[test]
    fn oversized_lines_are_skipped_not_buffered() {
        let big = vec![b'x'; MAX_LINE + 10];
        let out = lines(&[&big, b"tail\nnext\n"]);
        assert_eq!(out, vec![b"next".to_vec()]);
    }

    /// Fuzz finding: a line over MAX_LINE that ends inside one chunk was passed on, while the
    /// same line split across chunks was skipped.
    #[test]
    fn oversized_lines_are_skipped_however_they_are_chunked() {
        let mut whole = vec![b'x'; MAX_LINE + 10];
        whole.extend_from_slice(b"\nnext\n");
        let (a, b) = whole.split_at(MAX_LINE / 2);
        assert_eq!(lines(&[&whole]), vec![b"next".to_vec()]);
        assert_eq!(lines(&[a, b]), vec![b"next".to_vec()]);
        // Exactly MAX_LINE is kept either way.
        let mut edge = vec![b'y'; MAX_LINE];
        edge.push(b'\n');
        assert_eq!(lines(&[&edge]).len(), 1);
        assert_eq!(lines(&[&edge[..10], &edge[10..]]).len(), 1);
    }
}
