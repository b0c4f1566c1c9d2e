//! SQLite storage (rusqlite, bundled): the embedded default. WAL mode, so the DB
//! threads read concurrently while one writes; nodes on one host may share the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use starling_shard::blocking::{Store, StoreError};
use starling_wire::jid::BareJid;
use starling_wire::sasl::scram::{Credentials, Hash};

use super::{AccountKeys, Storage};

const SCHEMA: &str = include_str!("../../sqlite.sql");

pub struct Sqlite {
    connection: Connection,
}

fn query_error(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(
                e.code,
                rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Unavailable(error.to_string())
        }
        other => StoreError::Query(other.to_string()),
    }
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", parent.display())))?;
        }
        let connection =
            Connection::open(path).map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        connection.busy_timeout(Duration::from_secs(5)).map_err(query_error)?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(query_error)?;
        connection.execute_batch(SCHEMA).map_err(query_error)?;
        Ok(Sqlite { connection })
    }

    /// A factory for the DB pool: each thread opens its own connection.
    pub fn factory(path: PathBuf) -> impl Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync {
        move || Ok(Box::new(Sqlite::open(&path)?) as Box<dyn Store>)
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    fn user_key(user: &BareJid) -> (&str, &str) {
        (user.domain(), user.local().unwrap_or(""))
    }
}

impl Store for Sqlite {
    fn credentials(&mut self, user: &BareJid, hash: Hash) -> Result<Option<Credentials>, StoreError> {
        let (server, username) = Self::user_key(user);
        let sql = match hash {
            Hash::Sha1 => "SELECT iterations, sha1_salt, sha1_stored_key, sha1_server_key FROM users WHERE server = ?1 AND username = ?2",
            Hash::Sha256 => "SELECT iterations, sha256_salt, sha256_stored_key, sha256_server_key FROM users WHERE server = ?1 AND username = ?2",
        };
        let mut statement = self.connection.prepare_cached(sql).map_err(query_error)?;
        statement
            .query_row(params![server, username], |row| {
                let iterations: u32 = row.get(0)?;
                Ok((iterations, row.get::<_, Vec<u8>>(1)?, row.get::<_, Vec<u8>>(2)?, row.get::<_, Vec<u8>>(3)?))
            })
            .optional()
            .map_err(query_error)?
            .map(|(iterations, salt, stored_key, server_key)| {
                let iterations = std::num::NonZeroU32::new(iterations)
                    .ok_or_else(|| StoreError::Query(format!("zero iterations stored for {user}")))?;
                Ok(Credentials { hash, salt, iterations, stored_key, server_key })
            })
            .transpose()
    }
}

impl Storage for Sqlite {
    fn register(&mut self, user: &BareJid, keys: &AccountKeys) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let inserted = self
            .connection
            .prepare_cached(
                "INSERT OR IGNORE INTO users (server, username, iterations, sha1_salt, sha1_stored_key, sha1_server_key, \
                 sha256_salt, sha256_stored_key, sha256_server_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    server,
                    username,
                    keys.sha256.iterations.get(),
                    keys.sha1.salt,
                    keys.sha1.stored_key,
                    keys.sha1.server_key,
                    keys.sha256.salt,
                    keys.sha256.stored_key,
                    keys.sha256.server_key,
                    now as i64
                ])
            })
            .map_err(query_error)?;
        Ok(inserted == 1)
    }

    fn register_many(&mut self, accounts: &[(BareJid, AccountKeys)]) -> Result<Vec<bool>, StoreError> {
        self.connection.execute_batch("BEGIN IMMEDIATE").map_err(query_error)?;
        let created: Result<Vec<bool>, StoreError> =
            accounts.iter().map(|(user, keys)| self.register(user, keys)).collect();
        let end = if created.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.connection.execute_batch(end).map_err(query_error)?;
        created
    }

    fn remove(&mut self, user: &BareJid) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let removed = self
            .connection
            .execute("DELETE FROM users WHERE server = ?1 AND username = ?2", params![server, username])
            .map_err(query_error)?;
        Ok(removed == 1)
    }

    fn set_keys(&mut self, user: &BareJid, keys: &AccountKeys) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let updated = self
            .connection
            .execute(
                "UPDATE users SET iterations = ?3, sha1_salt = ?4, sha1_stored_key = ?5, sha1_server_key = ?6, \
                 sha256_salt = ?7, sha256_stored_key = ?8, sha256_server_key = ?9 WHERE server = ?1 AND username = ?2",
                params![
                    server,
                    username,
                    keys.sha256.iterations.get(),
                    keys.sha1.salt,
                    keys.sha1.stored_key,
                    keys.sha1.server_key,
                    keys.sha256.salt,
                    keys.sha256.stored_key,
                    keys.sha256.server_key
                ],
            )
            .map_err(query_error)?;
        Ok(updated == 1)
    }

    fn exists(&mut self, user: &BareJid) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .prepare_cached("SELECT 1 FROM users WHERE server = ?1 AND username = ?2")
            .and_then(|mut s| s.exists(params![server, username]))
            .map_err(query_error)
    }

    fn list(&mut self, domain: &str) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT username FROM users WHERE server = ?1 ORDER BY username")
            .map_err(query_error)?;
        let rows = statement
            .query_map(params![domain], |row| row.get::<_, String>(0))
            .map_err(query_error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(query_error)?;
        Ok(rows.into_iter().map(|user| format!("{user}@{domain}")).collect())
    }

    fn count(&mut self, domain: &str) -> Result<u64, StoreError> {
        self.connection
            .query_row("SELECT COUNT(*) FROM users WHERE server = ?1", params![domain], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(query_error)
    }

    fn secret(&mut self, name: &str) -> Result<Vec<u8>, StoreError> {
        use ring::rand::SecureRandom;
        let mut fresh = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut fresh).map_err(|_| StoreError::Query("no randomness".into()))?;
        self.connection
            .execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)", params![name, &fresh[..]])
            .map_err(query_error)?;
        self.connection
            .query_row("SELECT value FROM secrets WHERE name = ?1", params![name], |row| row.get(0))
            .map_err(query_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accounts are created once, found, listed, re-keyed and removed in a real file.
    #[test]
    fn account_lifecycle_in_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Sqlite::open(&dir.path().join("s.db")).unwrap();
        crate::store::tests::account_lifecycle(&mut store);
    }

    /// A secret is created once and then stable, across connections.
    #[test]
    fn secrets_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let first = Sqlite::open(&path).unwrap().secret("decoy").unwrap();
        let second = Sqlite::open(&path).unwrap().secret("decoy").unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 32);
    }
}
