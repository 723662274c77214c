//! Short-lived TURN credentials from a shared secret (coturn's `use-auth-secret`, the "REST
//! API" scheme; digest §5.3): the user name is `<expiry, Unix seconds>:<user>` and the
//! password `base64(HMAC-SHA1(secret, user name))`. The relay checks the expiry itself.

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// (user name, password) for `user`, valid until `expiry_unix` (seconds).
pub fn turn_rest_credentials(secret: &str, user: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("hmac takes any key");
    mac.update(username.as_bytes());
    let password = BASE64.encode(&mac.finalize().into_bytes());
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::turn_rest_credentials;

    /// Digest §5.6, vector K4.
    #[test]
    fn k4_vector() {
        let (user, pass) = turn_rest_credentials("lockstep-test-secret", "peerA", 1_767_225_600);
        assert_eq!(user, "1767225600:peerA");
        assert_eq!(pass, "TOxYul89Y7cwkyjqQzrD9TgL8FY=");
    }
}
