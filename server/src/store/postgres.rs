//! PostgreSQL storage (the `postgres` crate, synchronous: it runs on DB threads and
//! the discovery thread, never on a core). Nodes on several hosts share it.

use postgres::types::ToSql;
use postgres::{Client, NoTls};
use starling_shard::blocking::{Store, StoreError};
use starling_wire::jid::BareJid;
use starling_wire::sasl::scram::{Credentials, Hash};

use super::{AccountKeys, Storage};

const SCHEMA: &str = include_str!("../../pg.sql");

pub struct Postgres {
    client: Client,
}

fn error(error: postgres::Error) -> StoreError {
    if error.is_closed() || error.as_db_error().is_none() {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Query(error.to_string())
    }
}

/// A user row's first nine columns: server, username, iterations, then the SHA-1 and
/// SHA-256 credentials (salt, stored key, server key).
fn user_params<'a>(
    key: &'a (&'a str, &'a str),
    iterations: &'a i32,
    keys: &'a AccountKeys,
) -> [&'a (dyn ToSql + Sync); 9] {
    [
        &key.0,
        &key.1,
        iterations,
        &keys.sha1.salt,
        &keys.sha1.stored_key,
        &keys.sha1.server_key,
        &keys.sha256.salt,
        &keys.sha256.stored_key,
        &keys.sha256.server_key,
    ]
}

impl Postgres {
    /// Connects (`host=... dbname=... user=...`) and applies the schema.
    pub fn connect(url: &str) -> Result<Postgres, StoreError> {
        let mut config: postgres::Config =
            url.parse().map_err(|e: postgres::Error| StoreError::Unavailable(e.to_string()))?;
        config.connect_timeout(std::time::Duration::from_secs(5));
        // A database host that vanishes (no RST) must fail queries, not hang the
        // blocking thread: unacknowledged data times out, idle links are probed.
        config.tcp_user_timeout(std::time::Duration::from_secs(10));
        config.keepalives_idle(std::time::Duration::from_secs(30));
        let mut client = config.connect(NoTls).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        client.batch_execute(SCHEMA).map_err(error)?;
        Ok(Postgres { client })
    }

    pub fn factory(url: String) -> impl Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync {
        move || Ok(Box::new(Postgres::connect(&url)?) as Box<dyn Store>)
    }

    fn user_key(user: &BareJid) -> (&str, &str) {
        (user.domain(), user.local().unwrap_or(""))
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Store for Postgres {
    fn credentials(&mut self, user: &BareJid, hash: Hash) -> Result<Option<Credentials>, StoreError> {
        let (server, username) = Self::user_key(user);
        let sql = match hash {
            Hash::Sha1 => "SELECT iterations, sha1_salt, sha1_stored_key, sha1_server_key FROM users WHERE server = $1 AND username = $2",
            Hash::Sha256 => "SELECT iterations, sha256_salt, sha256_stored_key, sha256_server_key FROM users WHERE server = $1 AND username = $2",
        };
        let row = self.client.query_opt(sql, &[&server, &username]).map_err(error)?;
        row.map(|row| {
            let iterations: i32 = row.get(0);
            let iterations = std::num::NonZeroU32::new(iterations as u32)
                .ok_or_else(|| StoreError::Query(format!("zero iterations stored for {user}")))?;
            Ok(Credentials { hash, salt: row.get(1), iterations, stored_key: row.get(2), server_key: row.get(3) })
        })
        .transpose()
    }
}

impl Storage for Postgres {
    fn register(&mut self, user: &BareJid, keys: &AccountKeys) -> Result<bool, StoreError> {
        let created = self.register_many(&[(user.clone(), keys.clone())])?;
        Ok(created == [true])
    }

    fn remove(&mut self, user: &BareJid) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let removed = self
            .client
            .execute("DELETE FROM users WHERE server = $1 AND username = $2", &[&server, &username])
            .map_err(error)?;
        Ok(removed == 1)
    }

    fn set_keys(&mut self, user: &BareJid, keys: &AccountKeys) -> Result<bool, StoreError> {
        let key = Self::user_key(user);
        let iterations = keys.sha256.iterations.get() as i32;
        let updated = self
            .client
            .execute(
                "UPDATE users SET iterations = $3, sha1_salt = $4, sha1_stored_key = $5, sha1_server_key = $6, \
                 sha256_salt = $7, sha256_stored_key = $8, sha256_server_key = $9 WHERE server = $1 AND username = $2",
                &user_params(&key, &iterations, keys),
            )
            .map_err(error)?;
        Ok(updated == 1)
    }

    fn exists(&mut self, user: &BareJid) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let row = self
            .client
            .query_opt("SELECT 1 FROM users WHERE server = $1 AND username = $2", &[&server, &username])
            .map_err(error)?;
        Ok(row.is_some())
    }

    fn list(&mut self, domain: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .query("SELECT username FROM users WHERE server = $1 ORDER BY username", &[&domain])
            .map_err(error)?;
        Ok(rows.iter().map(|row| format!("{}@{domain}", row.get::<_, String>(0))).collect())
    }

    fn count(&mut self, domain: &str) -> Result<u64, StoreError> {
        let row = self.client.query_one("SELECT COUNT(*) FROM users WHERE server = $1", &[&domain]).map_err(error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn secret(&mut self, name: &str) -> Result<Vec<u8>, StoreError> {
        use ring::rand::SecureRandom;
        let mut fresh = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut fresh).map_err(|_| StoreError::Query("no randomness".into()))?;
        self.client
            .execute("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&name, &&fresh[..]])
            .map_err(error)?;
        let row = self.client.query_one("SELECT value FROM secrets WHERE name = $1", &[&name]).map_err(error)?;
        Ok(row.get(0))
    }

    fn register_many(&mut self, accounts: &[(BareJid, AccountKeys)]) -> Result<Vec<bool>, StoreError> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
        let mut created = Vec::with_capacity(accounts.len());
        let mut transaction = self.client.transaction().map_err(error)?;
        let statement = transaction
            .prepare(
                "INSERT INTO users (server, username, iterations, sha1_salt, sha1_stored_key, sha1_server_key, \
                 sha256_salt, sha256_stored_key, sha256_server_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT DO NOTHING",
            )
            .map_err(error)?;
        for (user, keys) in accounts {
            let key = Self::user_key(user);
            let iterations = keys.sha256.iterations.get() as i32;
            let mut params = user_params(&key, &iterations, keys).to_vec();
            params.push(&now);
            let n = transaction.execute(&statement, &params).map_err(error)?;
            created.push(n == 1);
        }
        transaction.commit().map_err(error)?;
        Ok(created)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

    /// A new, empty database on the local PostgreSQL server (127.0.0.1:5432, user
    /// postgres, trust auth), named after the test and this process; dropped with it.
    pub(crate) struct TestDatabase {
        name: String,
        pub url: String,
    }

    impl TestDatabase {
        pub(crate) fn new(test: &str) -> TestDatabase {
            let name = format!("starling_unit_{test}_{}", std::process::id());
            let mut admin =
                Client::connect(ADMIN, NoTls).expect("PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth)");
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
            admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
            let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={name}");
            TestDatabase { name, url }
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            if let Ok(mut admin) = Client::connect(ADMIN, NoTls) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }

    #[test]
    fn account_lifecycle_in_postgres() {
        let database = TestDatabase::new("accounts");
        let mut store = Postgres::connect(&database.url).unwrap();
        crate::store::tests::account_lifecycle(&mut store);
        let first = store.secret("decoy").unwrap();
        assert_eq!(store.secret("decoy").unwrap(), first, "a secret is kept");
    }
}
