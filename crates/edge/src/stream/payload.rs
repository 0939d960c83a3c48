//! What one stream payload (an SSE `data:` JSON or an NDJSON line) means to the tap, read by a
//! small JSON scanner that keeps only the fields the tap asks about.
//!
//! Why not `serde_json`: decoding a chunk into a struct validated and visited every key and
//! string, ~5,400 instructions for a 190-byte vLLM chunk, ten times the byte matching it
//! replaced. This walks the bytes once: strings are found with `memchr` and compared raw (an
//! escaped key is decoded only when it has escapes), skipped values are only bracket-matched,
//! nothing is allocated. It is as strict as the tap needs: it reads valid JSON as any decoder
//! does (spacing, key order, escapes), and says `Incomplete` when the bytes end inside the
//! value, so a JSON split over several SSE `data:` lines can be joined first.

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// The bytes end before the value does (more `data:` lines may follow).
    Incomplete,
    /// Not JSON, or not the shape of a stream payload.
    Invalid,
}

type R<T> = Result<T, Unread>;

/// Bytes that end a string's plain run: its closing quote or an escape.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Bytes a number or a literal (`true`, `false`, `null`) is made of.
static SCALAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = matches!(c as u8, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z');
        c += 1;
    }
    t
};

/// Deepest nesting walked; deeper payloads are refused rather than recursed into.
const MAX_DEPTH: u32 = 128;

/// The fields of a payload the tap reads, whatever the API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// A choice carries generated text: chat `delta.content` (a string or content parts),
    /// `reasoning_content`, `reasoning`, `refusal`, `tool_calls`, or completions' `text`.
    pub token: bool,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// A non-null `error` member, or `"object": "error"` (older vLLM).
    pub error: bool,
    /// Ollama's `done`.
    pub done: Option<bool>,
    /// Ollama's `eval_count`.
    pub eval_count: Option<u64>,
}

/// Reads one payload; a later duplicate member wins, as in Python's and Go's decoders.
pub fn read(data: &[u8]) -> R<Payload> {
    let mut r = Reader { b: data, i: 0 };
    let mut p = Payload::default();
    let mut buf = [0u8; KEY_BUF];
    r.object(0, |r, key| {
        match key.name(&mut buf) {
            b"choices" => p.token = r.choices()?,
            b"usage" => p.completion_tokens = r.usage()?,
            b"error" => p.error = !r.null_or_skip()?,
            b"object" => p.error |= r.string_is(b"error")?,
            b"done" => p.done = r.opt_bool()?,
            b"eval_count" => p.eval_count = r.opt_u64()?,
            _ => r.skip(0)?,
        }
        Ok(())
    })?;
    r.ws();
    if r.i == r.b.len() {
        Ok(p)
    } else {
        Err(Unread::Invalid)
    }
}

/// A string as it stands between its quotes.
#[derive(Debug, Clone, Copy)]
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

/// Longest key the tap looks for, decoded; longer escaped keys are none of them.
const KEY_BUF: usize = 32;

impl<'a> Str<'a> {
    /// The string's bytes: as they stand, or decoded into `buf` when it has escapes (empty
    /// when it does not fit or an escape is bad: no name the tap looks for).
    fn name<'b>(&self, buf: &'b mut [u8; KEY_BUF]) -> &'b [u8]
    where
        'a: 'b,
    {
        if !self.escaped {
            return self.raw;
        }
        let mut n = 0;
        let mut raw = self.raw;
        let mut ch = [0u8; 4];
        while let Some((&c, rest)) = raw.split_first() {
            let (piece, rest): (&[u8], &[u8]) = if c != b'\\' {
                (&raw[..1], rest)
            } else {
                match unescape(rest) {
                    Some((c, rest)) => (c.encode_utf8(&mut ch).as_bytes(), rest),
                    None => return &[],
                }
            };
            let Some(dst) = buf.get_mut(n..n + piece.len()) else {
                return &[];
            };
            dst.copy_from_slice(piece);
            n += piece.len();
            raw = rest;
        }
        &buf[..n]
    }

    /// Whether it decodes to `want`.
    fn is(&self, want: &[u8]) -> bool {
        self.name(&mut [0u8; KEY_BUF]) == want
    }
}

/// The character of an escape (the bytes after its `\`), and what follows it.
fn unescape(s: &[u8]) -> Option<(char, &[u8])> {
    let (&c, rest) = s.split_first()?;
    let simple = match c {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let hex = |s: &[u8]| -> Option<u32> {
                u32::from_str_radix(std::str::from_utf8(s.get(..4)?).ok()?, 16).ok()
            };
            let hi = hex(rest)?;
            let rest = &rest[4..];
            if (0xD800..0xDC00).contains(&hi) {
                // A surrogate pair: `\uD83D\uDE00`.
                let lo = rest.strip_prefix(b"\\u").and_then(hex)?;
                let code = 0x10000 + ((hi - 0xD800) << 10) + lo.checked_sub(0xDC00)?;
                return Some((char::from_u32(code)?, &rest[6..]));
            }
            return Some((char::from_u32(hi)?, rest));
        }
        _ => return None,
    };
    Some((simple, rest))
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> R<u8> {
        self.ws();
        self.b.get(self.i).copied().ok_or(Unread::Incomplete)
    }

    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Unread::Invalid)
        }
    }

    /// An object; `member` reads each member's value after its key.
    fn object(&mut self, depth: u32, mut member: impl FnMut(&mut Self, Str<'a>) -> R<()>) -> R<()> {
        if depth >= MAX_DEPTH {
            return Err(Unread::Invalid);
        }
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Unread::Invalid),
            }
        }
    }

    /// An array; `element` reads each element.
    fn array(&mut self, depth: u32, mut element: impl FnMut(&mut Self) -> R<()>) -> R<()> {
        if depth >= MAX_DEPTH {
            return Err(Unread::Invalid);
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Unread::Invalid),
            }
        }
    }

    /// A string, its escapes left as they are.
    fn string(&mut self) -> R<Str<'a>> {
        if self.peek()? != b'"' {
            return Err(Unread::Invalid);
        }
        let start = self.i + 1;
        let mut j = start;
        let mut escaped = false;
        let b = self.b;
        loop {
            // Keys and tokens are short: a plain loop beats `memchr`'s set-up.
            while let Some(&c) = b.get(j) {
                if STRING_STOP[usize::from(c)] {
                    break;
                }
                j += 1;
            }
            match b.get(j) {
                None => return Err(Unread::Incomplete),
                Some(b'"') => break,
                // A backslash: the escaped byte is skipped (a `\uXXXX`'s digits hold no quote).
                Some(_) => {
                    escaped = true;
                    j += 2;
                }
            }
        }
        self.i = j + 1;
        Ok(Str {
            raw: &self.b[start..j],
            escaped,
        })
    }

    /// A number or `true`/`false`/`null`: its bytes.
    fn scalar(&mut self) -> R<&'a [u8]> {
        self.ws();
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            if !SCALAR[usize::from(c)] {
                break;
            }
            self.i += 1;
        }
        if self.i == self.b.len() {
            // A payload is an object: a scalar running to the end was cut.
            return Err(Unread::Incomplete);
        }
        let s = &self.b[start..self.i];
        if matches!(s, b"true" | b"false" | b"null") || is_number(s) {
            Ok(s)
        } else {
            Err(Unread::Invalid)
        }
    }

    /// Skips any value.
    fn skip(&mut self, depth: u32) -> R<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth + 1, |r, _| r.skip(depth + 1)),
            b'[' => self.array(depth + 1, |r| r.skip(depth + 1)),
            _ => self.scalar().map(drop),
        }
    }

    /// `null` (true), or any other value, skipped (false).
    fn null_or_skip(&mut self) -> R<bool> {
        if self.peek()? == b'n' {
            return Ok(self.scalar()? == b"null");
        }
        self.skip(0).map(|()| false)
    }

    /// Whether the value is the string `want` (anything else is skipped: false).
    fn string_is(&mut self, want: &[u8]) -> R<bool> {
        if self.peek()? == b'"' {
            return Ok(self.string()?.is(want));
        }
        self.skip(0).map(|()| false)
    }

    fn opt_bool(&mut self) -> R<Option<bool>> {
        if self.peek()? != b't' && self.peek()? != b'f' && self.peek()? != b'n' {
            return self.skip(0).map(|()| None);
        }
        Ok(match self.scalar()? {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        })
    }

    /// A whole non-negative number; `None` for null or anything else.
    fn opt_u64(&mut self) -> R<Option<u64>> {
        match self.peek()? {
            b'-' | b'0'..=b'9' | b'n' => {
                let s = self.scalar()?;
                Ok(std::str::from_utf8(s).ok().and_then(|s| s.parse().ok()))
            }
            _ => self.skip(0).map(|()| None),
        }
    }

    /// Whether the value carries text: a non-empty string (an escape decodes to at least one
    /// character), content parts one of which does, or an object whose `text` does.
    fn has_text(&mut self, depth: u32) -> R<bool> {
        match self.peek()? {
            b'"' => Ok(!self.string()?.raw.is_empty()),
            b'[' => {
                let mut any = false;
                self.array(depth + 1, |r| {
                    any |= r.has_text(depth + 1)?;
                    Ok(())
                })?;
                Ok(any)
            }
            b'{' => {
                let mut any = false;
                self.object(depth + 1, |r, k| {
                    if k.is(b"text") {
                        any = r.has_text(depth + 1)?;
                        Ok(())
                    } else {
                        r.skip(depth + 1)
                    }
                })?;
                Ok(any)
            }
            _ => self.scalar().map(|_| false),
        }
    }

    /// Whether the value is a non-empty array (a `tool_calls` delta).
    fn non_empty_array(&mut self) -> R<bool> {
        if self.peek()? != b'[' {
            return self.skip(0).map(|()| false);
        }
        let mut n = 0usize;
        self.array(1, |r| {
            n += 1;
            r.skip(1)
        })?;
        Ok(n > 0)
    }

    /// `choices`: whether any choice carries a token.
    fn choices(&mut self) -> R<bool> {
        if self.peek()? != b'[' {
            return self.null_or_skip().map(|_| false);
        }
        let mut any = false;
        self.array(1, |r| {
            let mut token = false;
            let mut buf = [0u8; KEY_BUF];
            r.object(2, |r, k| {
                match k.name(&mut buf) {
                    b"delta" => token = r.delta()?,
                    b"text" => token = r.has_text(2)?,
                    _ => r.skip(2)?,
                }
                Ok(())
            })?;
            any |= token;
            Ok(())
        })?;
        Ok(any)
    }

    /// A chat delta: whether it carries generated text, reasoning, a refusal or a tool call.
    fn delta(&mut self) -> R<bool> {
        if self.peek()? != b'{' {
            return self.null_or_skip().map(|_| false);
        }
        let mut any = false;
        let mut buf = [0u8; KEY_BUF];
        self.object(3, |r, k| {
            any |= match k.name(&mut buf) {
                b"content" | b"reasoning_content" | b"reasoning" | b"refusal" => r.has_text(3)?,
                b"tool_calls" => r.non_empty_array()?,
                _ => {
                    r.skip(3)?;
                    false
                }
            };
            Ok(())
        })?;
        Ok(any)
    }

    /// `usage`: its `completion_tokens`.
    fn usage(&mut self) -> R<Option<u64>> {
        if self.peek()? != b'{' {
            return self.null_or_skip().map(|_| None);
        }
        let mut n = None;
        self.object(1, |r, k| {
            if k.is(b"completion_tokens") {
                n = r.opt_u64()?;
                Ok(())
            } else {
                r.skip(1)
            }
        })?;
        Ok(n)
    }
}

/// A JSON number: `-?digits(.digits)?([eE][+-]?digits)?`.
fn is_number(s: &[u8]) -> bool {
    let s = s.strip_prefix(b"-").unwrap_or(s);
    let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
    let n = digits(s);
    if n == 0 {
        return false;
    }
    let mut s = &s[n..];
    if let Some(rest) = s.strip_prefix(b".") {
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        s = &rest[n..];
    }
    if let Some(rest) = s.strip_prefix(b"e").or_else(|| s.strip_prefix(b"E")) {
        let rest = rest
            .strip_prefix(b"+")
            .or_else(|| rest.strip_prefix(b"-"))
            .unwrap_or(rest);
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        s = &rest[n..];
    }
    s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_literals_and_garbage() {
        for ok in [
            &b"{\"a\":1}"[..],
            b"{\"a\":-1.5e+3}",
            b"{\"a\":true}",
            b"{\"a\":null}",
            b"{}",
        ] {
            assert!(read(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"{\"a\":tru}"[..],
            b"{\"a\":1.}",
            b"{\"a\":x}",
            b"{\"a\" 1}",
            b"{\"a\":1}x",
            b"[1]",
        ] {
            assert_eq!(
                read(bad),
                Err(Unread::Invalid),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for cut in [
            &b"{"[..],
            b"{\"a",
            b"{\"a\":",
            b"{\"a\":\"x",
            b"{\"a\":[1,",
            b"{\"a\":12",
            b"",
        ] {
            assert_eq!(
                read(cut),
                Err(Unread::Incomplete),
                "{}",
                String::from_utf8_lossy(cut)
            );
        }
    }

    #[test]
    fn escaped_keys_are_decoded() {
        fn k(raw: &str) -> Str<'_> {
            Str {
                raw: raw.as_bytes(),
                escaped: true,
            }
        }
        assert!(k(r"cont\u0065nt").is(b"content"));
        assert!(k(r"\u00e9").is("é".as_bytes()));
        assert!(k(r"\ud83d\ude00").is("😀".as_bytes()));
        assert!(!k(r"\ud83d").is("😀".as_bytes()));
        assert!(!k(r"cont\u0065n").is(b"content"));
        assert!(!k(r"\q").is(b"q"));
        assert!(!k(&format!("{}\\u0065", "x".repeat(40))).is(b"x"));
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let mut deep = b"{\"a\":".to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        assert!(read(&deep).is_err());
    }

    #[test]
    fn duplicates_last_wins() {
        let p = read(br#"{"done":false,"done":true,"eval_count":1,"eval_count":2}"#).unwrap();
        assert_eq!((p.done, p.eval_count), (Some(true), Some(2)));
    }
}
