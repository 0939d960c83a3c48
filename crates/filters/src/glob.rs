//! Minimal `*` globs for model names (`llama3*`, `*:latest`, `Qwen/*`).

/// A pattern where `*` matches any run of characters, everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    parts: Vec<String>,
}

impl Glob {
    /// Compiles a pattern.
    pub fn new(pattern: &str) -> Self {
        Glob {
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    /// Whether `s` matches the whole pattern.
    pub fn matches(&self, s: &str) -> bool {
        let (first, last) = match self.parts.as_slice() {
            [only] => return s == only,
            [first, .., last] => (first, last),
            [] => return s.is_empty(),
        };
        let Some(rest) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some(mut rest) = rest.strip_suffix(last.as_str()) else {
            return false;
        };
        for mid in &self.parts[1..self.parts.len() - 1] {
            match rest.find(mid.as_str()) {
                Some(pos) => rest = &rest[pos + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(Glob::new("llama3*").matches("llama3.2:latest"));
        assert!(!Glob::new("llama3*").matches("qwen"));
        assert!(Glob::new("*:latest").matches("llama3.2:latest"));
        assert!(Glob::new("Qwen/*-8B").matches("Qwen/Qwen3-8B"));
        assert!(!Glob::new("Qwen/*-8B").matches("Qwen/Qwen3-8B-AWQ"));
        assert!(Glob::new("exact").matches("exact"));
        assert!(!Glob::new("exact").matches("exactly"));
        assert!(Glob::new("*").matches("anything"));
        assert!(Glob::new("a*b*c").matches("aXbYc"));
        assert!(!Glob::new("a*b*c").matches("aXbY"));
    }
}
