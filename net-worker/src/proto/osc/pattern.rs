//! OSC address pattern matching: OSC 1.0 (`?`, `*`, `[a-z]`, `[!…]`, `{foo,bar}`) and the OSC
//! 1.1 `//` (skip zero or more whole parts, XPath's descendant-or-self; digest §3.5).
//!
//! A pattern is compiled once into tokens and then matched against any number of addresses
//! (every node of the address space) without re-parsing; [`Cache`] keeps the compiled form of
//! recently seen patterns so a controller repeating `/lockstep/param/*` compiles it once.

use std::collections::VecDeque;

use thiserror::Error;

/// Longest pattern we compile.
pub const MAX_PATTERN: usize = 512;

/// Why a pattern cannot be compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PatternError {
    /// Does not start with `/`.
    #[error("a pattern starts with /")]
    NoSlash,
    /// Longer than [`MAX_PATTERN`].
    #[error("pattern too long")]
    TooLong,
    /// `[` or `{` without its closing bracket.
    #[error("unclosed bracket")]
    Unclosed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyChar,
    AnyRun,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Alternatives(Vec<Vec<char>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `//`: zero or more whole parts.
    AnyDepth,
    Part(Vec<Token>),
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    /// No wildcard at all: plain string comparison.
    literal: Option<String>,
}

fn compile_part(part: &str) -> Result<Vec<Token>, PatternError> {
    let chars: Vec<char> = part.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        let token = match c {
            '?' => Token::AnyChar,
            '*' => {
                if tokens.last() == Some(&Token::AnyRun) {
                    continue;
                }
                Token::AnyRun
            }
            '[' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .ok_or(PatternError::Unclosed)?;
                let body = &chars[i..i + end];
                i += end + 1;
                let (negated, body) = match body.first() {
                    Some('!') => (true, &body[1..]),
                    _ => (false, body),
                };
                let mut ranges = Vec::new();
                let mut j = 0;
                while j < body.len() {
                    // `a-z` is a range; a `-` first or last is literal.
                    if j + 2 < body.len() && body[j + 1] == '-' {
                        let (lo, hi) = (body[j], body[j + 2]);
                        ranges.push((lo.min(hi), lo.max(hi)));
                        j += 3;
                    } else {
                        ranges.push((body[j], body[j]));
                        j += 1;
                    }
                }
                Token::Set { negated, ranges }
            }
            '{' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or(PatternError::Unclosed)?;
                let body: String = chars[i..i + end].iter().collect();
                i += end + 1;
                Token::Alternatives(body.split(',').map(|s| s.chars().collect()).collect())
            }
            c => Token::Char(c),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

impl Pattern {
    /// Compile `pattern`.
    pub fn compile(pattern: &str) -> Result<Self, PatternError> {
        if pattern.len() > MAX_PATTERN {
            return Err(PatternError::TooLong);
        }
        let rest = pattern.strip_prefix('/').ok_or(PatternError::NoSlash)?;
        let wild = |c: char| matches!(c, '?' | '*' | '[' | '{');
        if !pattern.contains("//") && !pattern.chars().any(wild) {
            return Ok(Self {
                segments: Vec::new(),
                literal: Some(pattern.to_owned()),
            });
        }
        let mut segments = Vec::new();
        for part in rest.split('/') {
            if part.is_empty() {
                // `//` in the middle (or a trailing `/`): descendant-or-self.
                if segments.last() != Some(&Segment::AnyDepth) {
                    segments.push(Segment::AnyDepth);
                }
            } else {
                segments.push(Segment::Part(compile_part(part)?));
            }
        }
        // A leading `//` arrives as an empty first part: handled above.
        Ok(Self {
            segments,
            literal: None,
        })
    }

    /// Does `address` (a literal address, no wildcards) match?
    pub fn matches(&self, address: &str) -> bool {
        if let Some(literal) = &self.literal {
            return literal == address;
        }
        let Some(rest) = address.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

// Both matchers are dynamic programs over (token, position), so a hostile pattern such as
// `/*a*a*a*a*b` or `/a//a//a//b` costs O(tokens × length), never exponential backtracking.

fn match_segments(segments: &[Segment], parts: &[&str]) -> bool {
    let (n, m) = (segments.len(), parts.len());
    // ok[i][j]: segments[i..] match parts[j..].
    let mut ok = vec![vec![false; m + 1]; n + 1];
    ok[n][m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            ok[i][j] = match &segments[i] {
                Segment::AnyDepth => ok[i + 1][j] || (j < m && ok[i][j + 1]),
                Segment::Part(tokens) => {
                    j < m && ok[i + 1][j + 1] && {
                        let chars: Vec<char> = parts[j].chars().collect();
                        match_tokens(tokens, &chars)
                    }
                }
            };
        }
    }
    ok[0][0]
}

fn match_tokens(tokens: &[Token], s: &[char]) -> bool {
    let (n, m) = (tokens.len(), s.len());
    // ok[i][j]: tokens[i..] match s[j..].
    let mut ok = vec![vec![false; m + 1]; n + 1];
    ok[n][m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            ok[i][j] = match &tokens[i] {
                Token::AnyRun => ok[i + 1][j] || (j < m && ok[i][j + 1]),
                Token::Alternatives(options) => options
                    .iter()
                    .any(|o| s[j..].starts_with(o) && ok[i + 1][j + o.len()]),
                Token::Char(t) => j < m && s[j] == *t && ok[i + 1][j + 1],
                Token::AnyChar => j < m && ok[i + 1][j + 1],
                Token::Set { negated, ranges } => {
                    j < m
                        && ok[i + 1][j + 1]
                        && ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&s[j])) != *negated
                }
            };
        }
    }
    ok[0][0]
}

/// Compiled forms of the most recent patterns (least recently used dropped first).
#[derive(Debug)]
pub struct Cache {
    entries: VecDeque<(String, Result<Pattern, PatternError>)>,
    capacity: usize,
    /// Compilations (cache misses), for tests and the status.
    pub compiled: u64,
}

impl Cache {
    /// A cache of `capacity` patterns.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            compiled: 0,
        }
    }

    /// The compiled `pattern`.
    pub fn get(&mut self, pattern: &str) -> Result<&Pattern, PatternError> {
        if let Some(i) = self.entries.iter().position(|(p, _)| p == pattern) {
            let entry = self.entries.remove(i).expect("present");
            self.entries.push_front(entry);
        } else {
            self.compiled += 1;
            if self.entries.len() == self.capacity {
                self.entries.pop_back();
            }
            self.entries
                .push_front((pattern.to_owned(), Pattern::compile(pattern)));
        }
        match &self.entries.front().expect("just put there").1 {
            Ok(p) => Ok(p),
            Err(e) => Err(*e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, address: &str) -> bool {
        Pattern::compile(pattern).expect(pattern).matches(address)
    }

    #[test]
    fn digest_and_spec_cases() {
        assert!(m("/filter/*", "/filter/cutoff"));
        assert!(!m("/filter/*", "/filter/a/b"));
        assert!(m("/osc/[1-3]/freq", "/osc/2/freq"));
        assert!(!m("/osc/[1-3]/freq", "/osc/4/freq"));
        assert!(m("/osc/[!1-3]/freq", "/osc/4/freq"));
        assert!(!m("/osc/[!1-3]/freq", "/osc/1/freq"));
        assert!(m("/{filter,amp}/gain", "/amp/gain"));
        assert!(!m("/{filter,amp}/gain", "/pan/gain"));
        assert!(m("/a?c", "/abc"));
        assert!(!m("/a?c", "/ac"));
        assert!(m("//cutoff", "/filter/cutoff"));
        assert!(m("//cutoff", "/synth/1/filter/cutoff"));
        assert!(m("/synth//cutoff", "/synth/cutoff"));
        assert!(!m("//cutoff", "/filter/resonance"));
    }

    #[test]
    fn more_cases() {
        assert!(m("/lockstep/param/*", "/lockstep/param/mac_1"));
        assert!(m("/lockstep/param/mac_1?", "/lockstep/param/mac_12"));
        assert!(m("/lockstep/param/mac_*", "/lockstep/param/mac_1"));
        assert!(m("/x/*b*", "/x/abc"));
        assert!(m("/x/**", "/x/"));
        assert!(m("/x/[a-]", "/x/-"), "a trailing - is literal");
        assert!(m("/x/[-a]", "/x/-"), "a leading - is literal");
        assert!(m("/x/{,y}z", "/x/z"), "an empty alternative");
        assert!(m("/x/*{1,2}", "/x/mac_2"));
        assert!(!m("/x", "/x/y"));
        assert!(!m("/x/*", "/x"));
        assert!(m("/a/b", "/a/b"));
        assert!(!m("/a/b", "/a/c"));
        assert!(m("/a//c/d", "/a/x/y/c/d"));
        assert!(!m("/a//c/d", "/a/x/y/c/e"));
        assert_eq!(Pattern::compile("x"), Err(PatternError::NoSlash));
        assert_eq!(Pattern::compile("/[ab"), Err(PatternError::Unclosed));
        assert_eq!(Pattern::compile("/{ab"), Err(PatternError::Unclosed));
        assert_eq!(
            Pattern::compile(&"/a".repeat(300)),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn the_cache_compiles_each_pattern_once() {
        let mut cache = Cache::new(2);
        for _ in 0..10 {
            assert!(cache.get("/a/*").expect("ok").matches("/a/b"));
        }
        assert_eq!(cache.compiled, 1);
        let _ = cache.get("/b");
        let _ = cache.get("/c");
        let _ = cache.get("/a/*");
        assert_eq!(cache.compiled, 4, "evicted, compiled again");
        assert!(cache.get("/[").is_err());
    }

    #[test]
    fn hostile_patterns_stay_cheap() {
        let stars = format!("/{}b", "*a".repeat(100));
        assert!(!m(&stars, &format!("/{}", "a".repeat(200))));
        let depth = format!("/{}b", "a//".repeat(100));
        assert!(!m(&depth, &format!("/{}", "a/".repeat(50))));
    }

    #[test]
    fn arbitrary_patterns_never_panic_and_terminate() {
        let mut seed = 99u64;
        let alphabet: Vec<char> = "/ab*?[]{},!-".chars().collect();
        for _ in 0..50_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut s = seed;
            let p: String = (0..len)
                .map(|_| {
                    s = s.rotate_left(5) ^ 0x9E37;
                    alphabet[(s as usize) % alphabet.len()]
                })
                .collect();
            if let Ok(p) = Pattern::compile(&p) {
                let _ = p.matches("/ab/ba/aab");
            }
        }
    }
}
