//! Keys from a session code (digest 2, §8.4), KDF-only design:
//!
//! ```text
//! K          = Argon2id(password = folded secret, salt = "lockstep/v1" ‖ room (4 ASCII digits),
//!                       m, t, p from KdfParams, 32 bytes, version 0x13)
//! mqtt key   = HKDF-SHA256-Expand(PRK = K, info = "mqtt", 32 bytes)
//! key(tx)    = HKDF-SHA256(IKM = K, salt = "lockstep/v1/dgram",
//!                          info = "tx" ‖ sender id (8) ‖ receiver id (8), 32 bytes)
//! ```
//!
//! Argon2id is deliberately slow and memory-hard: anyone holding one sealed rendezvous message
//! (the broker, any subscriber) can test guesses offline, and a fast hash would let a GPU try
//! billions a second. Salting with the room stops one precomputation from serving every
//! session. The same [`RootKey`] type carries a pair key from a PAKE later (§8.4's strong
//! option): [`RootKey::from_bytes`], then the same per-direction expansion.
//!
//! Every key type wipes its bytes on drop (`zeroize`; the cipher and Argon2's memory blocks are
//! wiped by their crates' `zeroize` features), has no `Clone`, and prints as `<redacted>`.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::code::SessionCode;

/// Bytes of every key here.
pub const KEY_LEN: usize = 32;
/// Argon2id salt prefix; the room's 4 ASCII digits follow.
pub const KDF_SALT_PREFIX: &[u8] = b"lockstep/v1";
/// HKDF info of the rendezvous (MQTT) sealing key.
pub const MQTT_INFO: &[u8] = b"mqtt";
/// HKDF salt of the per-direction datagram keys.
pub const DATAGRAM_SALT: &[u8] = b"lockstep/v1/dgram";
/// HKDF info prefix of the per-direction datagram keys; sender and receiver ids follow.
pub const DATAGRAM_INFO_PREFIX: &[u8] = b"tx";

/// Argon2id cost parameters. Both peers must use the same ones: they are part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB (Argon2's `m`).
    pub memory_kib: u32,
    /// Passes over the memory (Argon2's `t`).
    pub passes: u32,
    /// Lanes (Argon2's `p`).
    pub lanes: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: m = 64 MiB, t = 3, p = 4.
    ///
    /// Why p = 4 rather than p = 1: the attacker's cost per guess is memory × time either way,
    /// and without the `argon2/parallel` feature our four lanes run one after another, so the
    /// wall time is that of p = 1 today. But `p` changes the output: fixing p = 4 now lets a
    /// later build fill the lanes on four threads (a quarter of the wait) without changing any
    /// key, and keeps us on a profile other implementations name. Expect hundreds of
    /// milliseconds in a release build: run it on a helper thread, never on the audio or the
    /// network thread.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 4,
    };

    /// Cheap parameters for unit tests (64 KiB, one pass, one lane). Never for real sessions:
    /// an offline guesser would test many thousands of codes a second per core.
    pub const TESTING: Self = Self {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why no root key could be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KdfError {
    /// Argon2 refused the parameters or could not allocate its memory.
    #[error("argon2id failed: {0}")]
    Argon2(argon2::Error),
}

/// A peer's id in a remote session: 8 random bytes chosen at start-up, bound into the
/// per-direction datagram keys (fixed length, so `sender ‖ receiver` is unambiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 8]);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The 32-byte session root key `K` (or a PAKE's pair key). Wiped on drop.
pub struct RootKey([u8; KEY_LEN]);

impl RootKey {
    /// Argon2id over the code's secret, salted with its room. Slow on purpose (see
    /// [`KdfParams::DEFAULT`]); allocates `params.memory_kib` KiB for the duration.
    pub fn derive(code: &SessionCode, params: &KdfParams) -> Result<Self, KdfError> {
        let argon_params = Params::new(
            params.memory_kib,
            params.passes,
            params.lanes,
            Some(KEY_LEN),
        )
        .map_err(KdfError::Argon2)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
        let mut salt = KDF_SALT_PREFIX.to_vec();
        salt.extend_from_slice(code.room_text().as_bytes());
        let mut key = Self([0; KEY_LEN]);
        argon
            .hash_password_into(code.secret_bytes(), &salt, &mut key.0)
            .map_err(KdfError::Argon2)?;
        Ok(key)
    }

    /// A root key from 32 uniformly random bytes (a PAKE's output, a test key).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key that seals rendezvous messages (digest §8.3).
    pub fn mqtt_key(&self) -> MqttKey {
        // `K` is already uniform, so it serves as HKDF's PRK directly (Expand only, §8.4).
        let hkdf = Hkdf::<Sha256>::from_prk(&self.0).expect("a 32-byte PRK is SHA-256's size");
        let mut key = MqttKey([0; KEY_LEN]);
        hkdf.expand(MQTT_INFO, &mut key.0)
            .expect("32 bytes is within HKDF-SHA256's 8160");
        key
    }

    /// The key for datagrams `sender` seals and `receiver` opens (digest §8.5). Each
    /// direction has its own key, so the two directions' sequence numbers never share a
    /// nonce space.
    pub fn datagram_key(&self, sender: PeerId, receiver: PeerId) -> DatagramKey {
        let hkdf = Hkdf::<Sha256>::new(Some(DATAGRAM_SALT), &self.0);
        let mut info = [0u8; DATAGRAM_INFO_PREFIX.len() + 16];
        info[..2].copy_from_slice(DATAGRAM_INFO_PREFIX);
        info[2..10].copy_from_slice(&sender.0);
        info[10..].copy_from_slice(&receiver.0);
        let mut key = DatagramKey([0; KEY_LEN]);
        hkdf.expand(&info, &mut key.0)
            .expect("32 bytes is within HKDF-SHA256's 8160");
        key
    }
}

/// The rendezvous sealing key. Wiped on drop.
pub struct MqttKey([u8; KEY_LEN]);

impl MqttKey {
    /// The key bytes, for the rendezvous AEAD.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// One direction's datagram key. Wiped on drop.
pub struct DatagramKey([u8; KEY_LEN]);

impl DatagramKey {
    /// A datagram key from raw bytes (tests, and keys agreed by other means).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key bytes, for [`super::frame`]'s cipher.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Wipe on drop and print as `<redacted>`, for each key type.
macro_rules! secret_key {
    ($($ty:ident),*) => {$(
        impl Drop for $ty {
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }

        impl ZeroizeOnDrop for $ty {}

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($ty), "(<redacted>)"))
            }
        }
    )*};
}
secret_key!(RootKey, MqttKey, DatagramKey);

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = PeerId([1, 2, 3, 4, 5, 6, 7, 8]);
    const B: PeerId = PeerId([0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8]);

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn test_root() -> RootKey {
        let code = SessionCode::parse("4821-K7QM x2vd-9hfa-3nwp").unwrap();
        RootKey::derive(&code, &KdfParams::TESTING).unwrap()
    }

    /// Cross-checked against Python's `cryptography` 48 (OpenSSL's Argon2id and HKDF), an
    /// implementation independent of the RustCrypto crates:
    ///
    /// ```text
    /// K = Argon2id(salt=b"lockstep/v1"+b"4821", length=32, iterations=1, lanes=1,
    ///              memory_cost=64).derive(b"k7qmx2vd9hfa3nwp")
    /// HKDFExpand(SHA256(), 32, info=b"mqtt").derive(K)
    /// HKDF(SHA256(), 32, salt=b"lockstep/v1/dgram", info=b"tx"+A+B).derive(K)
    /// ```
    #[test]
    fn key_schedule_matches_an_independent_implementation() {
        let root = test_root();
        assert_eq!(
            hex(&root.0),
            "5750f3788fcfa2306412a1d469127da7d8a535d99738b928f6724166735e6cb9"
        );
        assert_eq!(
            hex(root.mqtt_key().as_bytes()),
            "c718a150f290faed7b7c57ccab951811b252daf3b1b1d70931ad87f356a7447a"
        );
        assert_eq!(
            hex(root.datagram_key(A, B).as_bytes()),
            "e17cd2f9a200efa6026e958edd7d1a040fd9f298c6dcf3fc8b1a872b018a5e63"
        );
        assert_eq!(
            hex(root.datagram_key(B, A).as_bytes()),
            "6d878263757505e37b74fa45bc3d40cda5878aff95f7ac6f54339754ae4be593"
        );
    }

    #[test]
    fn room_and_secret_both_change_the_key() {
        let derive = |text: &str| {
            let code = SessionCode::parse(text).unwrap();
            RootKey::derive(&code, &KdfParams::TESTING).unwrap().0
        };
        let base = derive("4821-k7qm-x2vd-9hfa-3nwp");
        assert_eq!(base, derive("4821 k7qmx2vd 9HFA 3NWP"));
        assert_ne!(base, derive("4822-k7qm-x2vd-9hfa-3nwp"));
        assert_ne!(base, derive("4821-k7qm-x2vd-9hfa-3nwq"));
    }

    #[test]
    fn default_params_are_rfc_9106_and_accepted_by_argon2() {
        let p = KdfParams::default();
        assert_eq!((p.memory_kib, p.passes, p.lanes), (65536, 3, 4));
        assert!(Params::new(p.memory_kib, p.passes, p.lanes, Some(KEY_LEN)).is_ok());
        let bad = KdfParams {
            memory_kib: 1,
            ..KdfParams::TESTING
        };
        let code = SessionCode::parse("4821-k7qm-x2vd-9hfa-3nwp").unwrap();
        assert!(matches!(
            RootKey::derive(&code, &bad),
            Err(KdfError::Argon2(_))
        ));
    }

    #[test]
    fn keys_print_redacted() {
        let root = test_root();
        assert_eq!(format!("{root:?}"), "RootKey(<redacted>)");
        assert_eq!(format!("{:?}", root.mqtt_key()), "MqttKey(<redacted>)");
        assert_eq!(A.to_string(), "0102030405060708");
    }
}
