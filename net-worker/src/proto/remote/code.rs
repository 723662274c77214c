//! The human session code `<room>-<secret>` (digest 2, §8.3), magic-wormhole style: the room is
//! a short public number that only picks the rendezvous topic; the secret is what the keys come
//! from ([`super::keys`]).
//!
//! Parsing is forgiving about how people type and read codes aloud, and strict about strength:
//! - case is ignored; spaces, `-`, `_`, `.`, `,`, `/` and typographic dashes all separate groups,
//!   and runs of them count as one (so "4821 K7QM x2vd" = "4821-k7qm-x2vd");
//! - look-alikes fold as in Crockford's base32: `o` → `0`, `i` and `l` → `1`, so a code read
//!   from a screen in another font still matches;
//! - the key material is the secret's folded characters with the separators removed, so the
//!   grouping is cosmetic;
//! - a secret must carry at least [`MIN_SECRET_BITS`] by a conservative estimate (see
//!   [`SessionCode::secret_bits`]): the KDF only slows guessing, it cannot rescue a short code.
//!
//! Fresh codes ([`SessionCode::generate`]) are a 4-digit room and four groups of four Crockford
//! base32 characters (80 random bits), e.g. `4821-k7qm-x2vd-9hfa-3nwp`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use zeroize::Zeroize;

/// Least estimated strength of a secret, in bits (digest §8.4: "demand ≥ ~50 bits").
pub const MIN_SECRET_BITS: u32 = 50;
/// Least estimated strength of a generated secret, in bits.
pub const GENERATED_MIN_BITS: u32 = 64;
/// Most characters a typed code may have (separators included).
pub const MAX_CODE_CHARS: usize = 200;
/// Most digits in a room; rooms are shown zero-padded to this width.
pub const ROOM_DIGITS: usize = 4;

/// Generated secrets use this alphabet (Crockford's base32 in lower case: no `i`, `l`, `o`,
/// `u`), so every generated character survives the look-alike folding unchanged.
const GENERATED_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Generated secrets: groups × characters per group.
const GENERATED_GROUPS: usize = 4;
const GENERATED_GROUP_LEN: usize = 4;
/// Tries before a random source that keeps producing weak secrets is called broken (a fair
/// source fails one try in a few; a hundred in a row has probability below 10⁻⁴⁰).
const GENERATE_TRIES: usize = 100;

/// Distinct symbols a secret can hold after folding: digits, and letters without `i`, `l`, `o`.
const DIGIT_SYMBOLS: f64 = 10.0;
const LETTER_SYMBOLS: f64 = 23.0;
/// What a letters-only group is worth at most: one word from a 7776-word diceware list.
const WORD_BITS: f64 = 12.925;

/// Why text is not a usable session code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CodeError {
    /// Nothing but spaces and separators.
    #[error("no session code")]
    Empty,
    /// Longer than [`MAX_CODE_CHARS`].
    #[error("session code longer than {MAX_CODE_CHARS} characters")]
    TooLong,
    /// The part before the first separator is not 1 to 4 digits.
    #[error("the room (before the first dash) must be 1 to {ROOM_DIGITS} digits")]
    BadRoom,
    /// Nothing after the room.
    #[error("no secret after the room")]
    NoSecret,
    /// A character that is neither a letter, a digit nor a separator.
    #[error("character {0:?} is not allowed in a session code")]
    InvalidChar(char),
    /// The secret is too easy to guess.
    #[error("secret too weak: about {bits} bits, at least {MIN_SECRET_BITS} needed")]
    WeakSecret {
        /// The conservative estimate, rounded down.
        bits: u32,
    },
}

/// Why no fresh code could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GenerateError {
    /// The OS random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(getrandom::Error),
    /// The random source kept producing secrets that fail the strength check.
    #[error("the random source looks broken (only weak secrets)")]
    BrokenSource,
}

/// A parsed, normalised session code.
///
/// `Display` gives the canonical form to show and share (`0042-k7qm-x2vd`); `Debug` hides the
/// secret. Two codes are equal when room and key material are, whatever the grouping. The
/// secret is wiped from memory on drop.
pub struct SessionCode {
    /// The room number (the topic it picks is public).
    room: u16,
    /// The folded secret groups joined by `-`, for display.
    display: String,
    /// The folded secret without separators: the Argon2 password.
    secret: String,
    /// Conservative strength estimate of the secret as typed, in bits.
    bits: f64,
}

impl SessionCode {
    /// Parses and normalises a typed code (see the module docs for the rules).
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        if text.chars().count() > MAX_CODE_CHARS {
            return Err(CodeError::TooLong);
        }
        let mut tokens = text.split(is_separator).filter(|t| !t.is_empty());
        let room = parse_room(tokens.next().ok_or(CodeError::Empty)?)?;
        let mut typed = Vec::new();
        for token in tokens {
            typed.push(lower_group(token)?);
        }
        if typed.is_empty() {
            return Err(CodeError::NoSecret);
        }
        // The estimate looks at what was typed: folding turns the `o` of a word into a digit,
        // which would make a dictionary word look like random characters.
        let bits = estimate_bits(&typed);
        let mut folded: Vec<String> = typed
            .iter()
            .map(|group| group.chars().map(fold).collect())
            .collect();
        let code = Self {
            room,
            display: folded.join("-"),
            secret: folded.concat(),
            bits,
        };
        typed
            .iter_mut()
            .chain(folded.iter_mut())
            .for_each(Zeroize::zeroize);
        if code.secret_bits() < MIN_SECRET_BITS {
            return Err(CodeError::WeakSecret {
                bits: code.secret_bits(),
            });
        }
        Ok(code)
    }

    /// A fresh code from the OS random source: a uniform 4-digit room and 80 random bits of
    /// secret whose estimate is at least [`GENERATED_MIN_BITS`] (weaker-looking draws, such as
    /// a group of four letters in a row, are drawn again).
    pub fn generate() -> Result<Self, GenerateError> {
        Self::generate_with(|buf| getrandom::fill(buf).map_err(GenerateError::Random))
    }

    /// [`SessionCode::generate`] with a caller's random source (tests use a seeded one).
    pub fn generate_with(
        mut fill: impl FnMut(&mut [u8]) -> Result<(), GenerateError>,
    ) -> Result<Self, GenerateError> {
        let room = loop {
            let mut two = [0u8; 2];
            fill(&mut two)?;
            // 60 000 is a multiple of 10 000: rejecting above it keeps the room uniform.
            let value = u16::from_be_bytes(two);
            if value < 60_000 {
                break value % 10_000;
            }
        };
        for _ in 0..GENERATE_TRIES {
            let mut raw = [0u8; GENERATED_GROUPS * GENERATED_GROUP_LEN];
            fill(&mut raw)?;
            let mut text = format!("{room:04}");
            for (i, byte) in raw.iter().enumerate() {
                if i % GENERATED_GROUP_LEN == 0 {
                    text.push('-');
                }
                // 256 is a multiple of 32: the low five bits are uniform.
                text.push(char::from(GENERATED_ALPHABET[usize::from(byte & 31)]));
            }
            raw.zeroize();
            let parsed = Self::parse(&text);
            text.zeroize();
            if let Ok(code) = parsed
                && code.secret_bits() >= GENERATED_MIN_BITS
            {
                return Ok(code);
            }
        }
        Err(GenerateError::BrokenSource)
    }

    /// The room number.
    pub fn room(&self) -> u16 {
        self.room
    }

    /// The room as the four ASCII digits that go into topics and the KDF salt (`"0042"`).
    pub fn room_text(&self) -> String {
        format!("{:0width$}", self.room, width = ROOM_DIGITS)
    }

    /// The conservative strength estimate of the secret, rounded down.
    ///
    /// Model, over the groups as typed (before look-alike folding): the attacker knows which
    /// symbol classes the secret uses (digits: 10 symbols; letters: 23, the distinct ones left
    /// after folding) and guesses each character from their union, except that a character
    /// equal or adjacent to the one before it (`aa`, `ab`, `43`) counts nothing, a group
    /// repeated earlier counts nothing, and a group of letters only counts at most as one
    /// diceware word (12.9 bits), because it may be one. So `correct horse battery staple
    /// zebra` counts 5 words ≈ 64 bits, not 25 random letters, and `correcthorsebatterystaple`
    /// counts one word.
    pub fn secret_bits(&self) -> u32 {
        self.bits as u32
    }

    /// The Argon2 password: the folded secret without separators.
    pub(crate) fn secret_bytes(&self) -> &[u8] {
        self.secret.as_bytes()
    }
}

impl FromStr for SessionCode {
    type Err = CodeError;

    fn from_str(text: &str) -> Result<Self, CodeError> {
        Self::parse(text)
    }
}

impl fmt::Display for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.room_text(), self.display)
    }
}

impl fmt::Debug for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCode")
            .field("room", &self.room)
            .field("secret", &"<redacted>")
            .field("secret_bits", &self.secret_bits())
            .finish()
    }
}

impl PartialEq for SessionCode {
    fn eq(&self, other: &Self) -> bool {
        self.room == other.room && self.secret == other.secret
    }
}

impl Eq for SessionCode {}

impl Drop for SessionCode {
    fn drop(&mut self) {
        self.display.zeroize();
        self.secret.zeroize();
    }
}

/// Group separators: ASCII punctuation people use, whitespace, and the dashes word processors
/// and phones substitute for `-`.
fn is_separator(c: char) -> bool {
    matches!(
        c,
        '-' | '_' | '.' | ',' | '/' | '\u{2010}'..='\u{2015}' | '\u{2212}'
    ) || c.is_whitespace()
}

/// Crockford's look-alike folding of a lower-case ASCII letter or digit.
fn fold(c: char) -> char {
    match c {
        'o' => '0',
        'i' | 'l' => '1',
        other => other,
    }
}

fn parse_room(token: &str) -> Result<u16, CodeError> {
    if token.chars().count() > ROOM_DIGITS {
        return Err(CodeError::BadRoom);
    }
    let mut room = 0u16;
    for c in token.chars() {
        let digit = Some(c)
            .filter(char::is_ascii_alphanumeric)
            .and_then(|c| fold(c.to_ascii_lowercase()).to_digit(10))
            .ok_or(CodeError::BadRoom)?;
        // At most four digits: 9999 fits.
        room = room * 10 + digit as u16;
    }
    Ok(room)
}

/// A secret group in lower case; anything but ASCII letters and digits is refused.
fn lower_group(token: &str) -> Result<String, CodeError> {
    token
        .chars()
        .map(|c| {
            c.is_ascii_alphanumeric()
                .then(|| c.to_ascii_lowercase())
                .ok_or(CodeError::InvalidChar(c))
        })
        .collect()
}

/// The conservative estimate documented on [`SessionCode::secret_bits`], over the typed
/// (lower-case, unfolded) groups.
fn estimate_bits(groups: &[String]) -> f64 {
    let all = || groups.iter().flat_map(|g| g.bytes());
    let digits = all().any(|b| b.is_ascii_digit());
    let letters = all().any(|b| b.is_ascii_alphabetic());
    let symbols =
        if digits { DIGIT_SYMBOLS } else { 0.0 } + if letters { LETTER_SYMBOLS } else { 0.0 };
    let per_char = symbols.max(1.0).log2();
    let mut total = 0.0;
    let mut prev: Option<u8> = None;
    for (i, group) in groups.iter().enumerate() {
        let mut bits = 0.0;
        for b in group.bytes() {
            if prev.is_none_or(|p| p.abs_diff(b) > 1) {
                bits += per_char;
            }
            prev = Some(b);
        }
        if groups[..i].contains(group) {
            bits = 0.0;
        }
        if group.bytes().all(|b| b.is_ascii_alphabetic()) {
            bits = f64::min(bits, WORD_BITS);
        }
        total += bits;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "4821-k7qm-x2vd-9hfa-3nwp";

    #[test]
    fn canonical_code_round_trips() {
        let code = SessionCode::parse(GOOD).unwrap();
        assert_eq!(code.room(), 4821);
        assert_eq!(code.room_text(), "4821");
        assert_eq!(code.to_string(), GOOD);
        assert_eq!(code.secret_bytes(), b"k7qmx2vd9hfa3nwp");
        assert_eq!(SessionCode::parse(&code.to_string()).unwrap(), code);
        assert_eq!(GOOD.parse::<SessionCode>().unwrap(), code);
    }

    #[test]
    fn normalises_case_separators_and_look_alikes() {
        let code = SessionCode::parse(GOOD).unwrap();
        for typed in [
            "  4821 K7QM X2VD 9HFA 3NWP ",
            "4821--k7qm__x2vd..9hfa//3nwp",
            "4821\u{2013}k7qm\u{2014}x2vd\u{2212}9hfa 3nwp",
            "4821-k7qmx2vd9hfa3nwp",
            "4821 k7qm-x2vd\t9hfa\n3nwp",
        ] {
            assert_eq!(SessionCode::parse(typed).unwrap(), code, "{typed:?}");
        }
        // Look-alikes fold both in the room and in the secret.
        let folded = SessionCode::parse("0042-k7qm-x2vd-9hfa-3nw1-0000").unwrap();
        let typed = SessionCode::parse("o042-K7QM-X2VD-9HFA-3NWl-OoOo").unwrap();
        assert_eq!(typed, folded);
        assert_eq!(typed.to_string(), "0042-k7qm-x2vd-9hfa-3nw1-0000");
        assert_eq!(
            SessionCode::parse("oO4Z-k7qm-x2vd-9hfa-3nwp"),
            Err(CodeError::BadRoom),
            "Z is not a digit"
        );
        // Short rooms are zero-padded: the same room as the padded form.
        let short = SessionCode::parse("42-k7qm-x2vd-9hfa-3nwp").unwrap();
        assert_eq!(short.room_text(), "0042");
        assert_eq!(
            short,
            SessionCode::parse("0042-k7qm-x2vd-9hfa-3nwp").unwrap()
        );
    }

    #[test]
    fn refusals_are_typed() {
        assert_eq!(SessionCode::parse(""), Err(CodeError::Empty));
        assert_eq!(SessionCode::parse(" - -- "), Err(CodeError::Empty));
        assert_eq!(SessionCode::parse("4821"), Err(CodeError::NoSecret));
        assert_eq!(SessionCode::parse("4821- - "), Err(CodeError::NoSecret));
        assert_eq!(SessionCode::parse("48213-k7qm"), Err(CodeError::BadRoom));
        assert_eq!(SessionCode::parse("ab-k7qm-x2vd"), Err(CodeError::BadRoom));
        assert_eq!(
            SessionCode::parse("4821-k7qm-x2vd-9hfa-3nwp!"),
            Err(CodeError::InvalidChar('!'))
        );
        assert_eq!(
            SessionCode::parse("4821-k7qm-ü2vd-9hfa-3nwp"),
            Err(CodeError::InvalidChar('ü'))
        );
        let long = format!("4821-{}", "k7qm-".repeat(40));
        assert_eq!(SessionCode::parse(&long), Err(CodeError::TooLong));
    }

    #[test]
    fn weak_secrets_are_refused() {
        let weak =
            |text: &str| matches!(SessionCode::parse(text), Err(CodeError::WeakSecret { .. }));
        // A 6-digit code: ~20 bits.
        assert!(weak("4821-839251"));
        // 15 random digits ≈ 49.8 bits; 16 ≈ 53.
        assert!(weak("4821-839251-748302-917"));
        assert!(!weak("4821-839251-748302-9175"));
        // Runs and repeats count nothing.
        assert!(weak("4821-1111111111111111111111"));
        assert!(weak("4821-1234567890123456789012"));
        assert!(weak("4821-k7qm-k7qm-k7qm-k7qm-k7qm"));
        // Letters only: each group may be a dictionary word.
        assert!(weak("4821-correcthorsebatterystaple"));
        assert!(weak("4821-correct-horse-battery"));
        assert!(!weak("4821-correct-horse-battery-staple-zebra"));
        // Folding (`o` → `0`) does not turn words into random-looking characters.
        assert!(weak("4821-correcthorsebatterystaple-1"));
        // Mixed random groups: 13 characters over 33 symbols ≈ 65 bits.
        assert!(!weak("4821-k7qm-x2vd-9hfa-3"));
        assert_eq!(
            SessionCode::parse("4821-k7qm"),
            Err(CodeError::WeakSecret { bits: 20 })
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let code = SessionCode::parse(GOOD).unwrap();
        let debug = format!("{code:?}");
        assert!(!debug.contains("k7qm"), "{debug}");
        assert!(debug.contains("4821"), "{debug}");
    }

    /// A seeded stand-in for the OS random source (xorshift64*).
    fn seeded(mut state: u64) -> impl FnMut(&mut [u8]) -> Result<(), GenerateError> {
        move |buf| {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
            }
            Ok(())
        }
    }

    #[test]
    fn generated_codes_are_strong_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        let mut fill = seeded(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let code = SessionCode::generate_with(&mut fill).unwrap();
            let text = code.to_string();
            assert_eq!(text.len(), 4 + 4 * 5, "{text}");
            assert!(code.secret_bits() >= GENERATED_MIN_BITS, "{text}");
            assert_eq!(SessionCode::parse(&text).unwrap(), code);
            assert!(
                text.bytes()
                    .all(|b| b == b'-' || GENERATED_ALPHABET.contains(&b))
            );
            assert!(seen.insert(text));
        }
        // The OS source works here too.
        let fresh = SessionCode::generate().unwrap();
        assert!(fresh.secret_bits() >= GENERATED_MIN_BITS);
    }

    #[test]
    fn a_broken_random_source_is_reported() {
        let zeros = |buf: &mut [u8]| {
            buf.fill(0);
            Ok(())
        };
        assert_eq!(
            SessionCode::generate_with(zeros),
            Err(GenerateError::BrokenSource)
        );
    }
}
