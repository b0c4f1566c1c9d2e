//! Bulk accounts for Starling: a CSV for `starling account importUsers` whose
//! password column holds precomputed SCRAM credentials (MongooseIM's
//! `==MULTI_SCRAM==` form), with salts derived from a seed so the load generator
//! derives the same client keys on its own. PBKDF2 runs once per user and hash, on
//! every CPU, here instead of in the server.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine as _;
use starling_wire::sasl::scram::{Credentials, Hash};

use crate::client::salt_for;

/// Which accounts to write.
#[derive(Clone, Copy, Debug)]
pub struct AccountSet<'a> {
    /// How many, `user{n}` from `first`.
    pub users: u64,
    pub first: u64,
    pub domain: &'a str,
    pub user_template: &'a str,
    pub password_template: &'a str,
    /// Derives the salts, so the load generator can derive the same keys.
    pub seed: &'a str,
    pub iterations: NonZeroU32,
}

/// Writes one row per account of `set`.
pub fn write_csv(path: &Path, set: &AccountSet<'_>) -> std::io::Result<()> {
    let AccountSet { users, first, domain, user_template, password_template, seed, iterations } = *set;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
    let per_thread = users.div_ceil(threads).max(1);
    let parts: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = first + t * per_thread;
                let end = (start + per_thread).min(first + users);
                scope.spawn(move || {
                    let mut text = String::new();
                    for n in start..end {
                        let user = user_template.replace("{n}", &n.to_string());
                        let password = password_template.replace("{n}", &n.to_string());
                        text.push_str(&row(&user, domain, &password, seed, iterations));
                        text.push('\n');
                    }
                    text
                })
            })
            .collect();
        // Invariant: the workers only compute; they do not panic on any row.
        handles.into_iter().map(|h| h.join().expect("key derivation")).collect()
    });
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for part in parts {
        file.write_all(part.as_bytes())?;
    }
    file.flush()
}

/// One CSV row: `user,domain,"==MULTI_SCRAM==,..."`.
pub fn row(user: &str, domain: &str, password: &str, seed: &str, iterations: NonZeroU32) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sha256_salt = salt_for(seed, user, domain);
    let sha1_salt = salt_for(&format!("{seed}#sha1"), user, domain);
    let sha1 = Credentials::derive(Hash::Sha1, password, &sha1_salt, iterations);
    let sha256 = Credentials::derive(Hash::Sha256, password, &sha256_salt, iterations);
    let part = |prefix: &str, c: &Credentials| {
        format!("{prefix}{}|{}|{}", b64.encode(&c.salt), b64.encode(&c.stored_key), b64.encode(&c.server_key))
    };
    format!(
        "{user},{domain},\"==MULTI_SCRAM==,{iterations},{},{}\"",
        part("===SHA1===", &sha1),
        part("==SHA256==", &sha256)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows carry both hashes with the seed-derived SHA-256 salt the client expects.
    #[test]
    fn rows_use_the_seed_salt() {
        let row = row("user1", "localhost", "pass1", "seed", NonZeroU32::new(16).unwrap());
        assert!(row.starts_with("user1,localhost,\"==MULTI_SCRAM==,16,===SHA1==="), "{row}");
        let salt = base64::engine::general_purpose::STANDARD.encode(salt_for("seed", "user1", "localhost"));
        assert!(row.contains(&format!("==SHA256=={salt}|")), "{row}");
        assert!(row.ends_with('"'));
    }
}
