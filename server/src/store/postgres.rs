//! PostgreSQL storage (the `postgres` crate, synchronous: it runs on DB threads and
//! the discovery thread, never on a core). Nodes on several hosts share it.

use postgres::types::ToSql;
use postgres::{Client, NoTls};
use std::time::Duration;

use starling_modules::roster::{Roster, RosterItem, Subscription};
use starling_modules::store::{
    AccountData, ArchivePage, ArchiveQuery, ArchiveTrim, ArchivedMessage, DataKind, PepItem, PepNode, Store,
};
use starling_shard::db::{AuthStore, FastToken, Registered, StoreError};
use starling_wire::jid::BareJid;
use starling_wire::sasl::scram::{Credentials, Hash};

use super::{AccountKeys, Storage};

const SCHEMA: &str = include_str!("../../pg.sql");

pub struct Postgres {
    client: Client,
}

fn error(error: postgres::Error) -> StoreError {
    if error.is_closed() || error.as_db_error().is_none() {
        StoreError::Unavailable(describe(&error))
    } else {
        StoreError::Query(describe(&error))
    }
}

/// The error with the server's message and SQLSTATE code (postgres' own text for a
/// server error is only "db error").
fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{error}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// The advisory lock key the schema is applied under ("starling" in ASCII).
const SCHEMA_LOCK: i64 = 0x7374_6172_6c69_6e67;

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
        let mut client = config.connect(NoTls).map_err(|e| StoreError::Unavailable(describe(&e)))?;
        // Nodes started together on a new database create the tables together:
        // `IF NOT EXISTS` alone races in the catalog (a duplicate-key error), so the
        // schema is applied under one database-wide lock, one connection at a time.
        let mut schema = client.transaction().map_err(error)?;
        schema.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).map_err(error)?;
        schema.batch_execute(SCHEMA).map_err(error)?;
        schema.commit().map_err(error)?;
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

impl AuthStore for Postgres {
    fn fast_tokens(&mut self, user: &BareJid, user_agent: &str, now: u64) -> Result<Vec<FastToken>, StoreError> {
        let (server, username) = Self::user_key(user);
        let row = self
            .client
            .query_opt(
                "SELECT new_token, new_expire, current_token, current_expire FROM fast_auth_token \
                 WHERE server = $1 AND username = $2 AND user_agent_id = $3",
                &[&server, &username, &user_agent],
            )
            .map_err(error)?;
        let row = row.map(|row| [(row.get(0), row.get(1)), (row.get(2), row.get(3))]);
        Ok(super::live_fast_tokens(row, now))
    }

    fn issue_fast_token(&mut self, user: &BareJid, user_agent: &str, token: &FastToken) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let expires = token.expires as i64;
        self.client
            .execute(
                "INSERT INTO fast_auth_token (server, username, user_agent_id, new_token, new_expire) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server, username, user_agent_id) DO UPDATE SET \
                 current_token = fast_auth_token.new_token, current_expire = fast_auth_token.new_expire, \
                 new_token = excluded.new_token, new_expire = excluded.new_expire",
                &[&server, &username, &user_agent, &token.id, &expires],
            )
            .map_err(error)?;
        Ok(())
    }

    fn create_account(
        &mut self,
        user: &BareJid,
        (sha1, sha256): (&Credentials, &Credentials),
        limit: Option<(&str, Duration)>,
    ) -> Result<Registered, StoreError> {
        let keys = AccountKeys { sha1: sha1.clone(), sha256: sha256.clone() };
        let now = (now_us() / 1_000_000) as i64;
        let key = Self::user_key(user);
        let iterations = keys.sha256.iterations.get() as i32;
        let mut transaction = self.client.transaction().map_err(error)?;
        if let Some((address, interval)) = limit {
            // One registration per address at a time, across nodes.
            transaction.execute("LOCK TABLE registration_address IN EXCLUSIVE MODE", &[]).map_err(error)?;
            let since = now - interval.as_secs() as i64;
            transaction
                .execute("DELETE FROM registration_address WHERE registered_at <= $1", &[&since])
                .map_err(error)?;
            let recent = transaction
                .query_opt("SELECT 1 FROM registration_address WHERE address = $1", &[&address])
                .map_err(error)?;
            if recent.is_some() {
                return Ok(Registered::TooSoon);
            }
        }
        let mut params = user_params(&key, &iterations, &keys).to_vec();
        params.push(&now);
        let created = transaction
            .execute(
                "INSERT INTO users (server, username, iterations, sha1_salt, sha1_stored_key, sha1_server_key, \
                 sha256_salt, sha256_stored_key, sha256_server_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT DO NOTHING",
                &params,
            )
            .map_err(error)?;
        if created == 0 {
            return Ok(Registered::Exists);
        }
        if let Some((address, _)) = limit {
            transaction
                .execute(
                    "INSERT INTO registration_address (address, registered_at) VALUES ($1, $2) \
                     ON CONFLICT (address) DO UPDATE SET registered_at = EXCLUDED.registered_at",
                    &[&address, &now],
                )
                .map_err(error)?;
        }
        transaction.commit().map_err(error)?;
        Ok(Registered::Created)
    }

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

impl Store for Postgres {
    fn account(&mut self, user: &BareJid) -> Result<AccountData, StoreError> {
        let (server, username) = Self::user_key(user);
        let version = self
            .client
            .query_opt("SELECT version FROM roster_version WHERE server = $1 AND username = $2", &[&server, &username])
            .map_err(error)?
            .map_or(0, |row| row.get::<_, i64>(0) as u64);
        let items = self
            .client
            .query(
                "SELECT jid, name, subscription, ask, pending_in, approved, visible, groups FROM rosterusers \
                 WHERE server = $1 AND username = $2 ORDER BY jid",
                &[&server, &username],
            )
            .map_err(error)?
            .iter()
            .map(|row| RosterItem {
                jid: row.get(0),
                name: row.get(1),
                subscription: Subscription::parse(row.get(2)),
                ask: row.get(3),
                pending_in: row.get(4),
                approved: row.get(5),
                visible: row.get(6),
                groups: row
                    .get::<_, &str>(7)
                    .split(GROUP_SEPARATOR)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
            .collect();
        let blocked = self
            .client
            .query(
                "SELECT jid FROM blocking WHERE server = $1 AND username = $2 ORDER BY added_at, jid",
                &[&server, &username],
            )
            .map_err(error)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok(AccountData { roster: Roster { version, items }, blocked })
    }

    fn roster_put(&mut self, user: &BareJid, item: &RosterItem, version: u64) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let groups = item.groups.join(&GROUP_SEPARATOR.to_string());
        let mut transaction = self.client.transaction().map_err(error)?;
        transaction
            .execute(
                "INSERT INTO rosterusers (server, username, jid, name, subscription, ask, pending_in, approved, visible, groups) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (server, username, jid) DO UPDATE SET \
                 name = EXCLUDED.name, subscription = EXCLUDED.subscription, ask = EXCLUDED.ask, \
                 pending_in = EXCLUDED.pending_in, approved = EXCLUDED.approved, visible = EXCLUDED.visible, \
                 groups = EXCLUDED.groups",
                &[
                    &server,
                    &username,
                    &item.jid,
                    &item.name,
                    &item.subscription.as_str(),
                    &item.ask,
                    &item.pending_in,
                    &item.approved,
                    &item.visible,
                    &groups,
                ],
            )
            .map_err(error)?;
        set_roster_version(&mut transaction, server, username, version)?;
        transaction.commit().map_err(error)
    }

    fn roster_delete(&mut self, user: &BareJid, jid: &str, version: u64) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let mut transaction = self.client.transaction().map_err(error)?;
        transaction
            .execute(
                "DELETE FROM rosterusers WHERE server = $1 AND username = $2 AND jid = $3",
                &[&server, &username, &jid],
            )
            .map_err(error)?;
        set_roster_version(&mut transaction, server, username, version)?;
        transaction.commit().map_err(error)
    }

    fn block(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let now = now_us() as i64;
        let mut transaction = self.client.transaction().map_err(error)?;
        for jid in jids {
            transaction
                .execute(
                    "INSERT INTO blocking (server, username, jid, added_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&server, &username, jid, &now],
                )
                .map_err(error)?;
        }
        transaction.commit().map_err(error)
    }

    fn unblock(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        if jids.is_empty() {
            self.client
                .execute("DELETE FROM blocking WHERE server = $1 AND username = $2", &[&server, &username])
                .map_err(error)?;
            return Ok(());
        }
        self.client
            .execute(
                "DELETE FROM blocking WHERE server = $1 AND username = $2 AND jid = ANY($3)",
                &[&server, &username, &jids],
            )
            .map(|_| ())
            .map_err(error)
    }

    fn offline_push(&mut self, user: &BareJid, stanza: &[u8], max: usize) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let mut transaction = self.client.transaction().map_err(error)?;
        // Serialises pushes for one account, so the count and the insert agree.
        transaction
            .execute("SELECT pg_advisory_xact_lock(hashtext($1 || '@' || $2))", &[&username, &server])
            .map_err(error)?;
        let stored: i64 = transaction
            .query_one(
                "SELECT COUNT(*) FROM offline_message WHERE server = $1 AND username = $2",
                &[&server, &username],
            )
            .map_err(error)?
            .get(0);
        if stored as usize >= max {
            return Ok(false);
        }
        let now = (now_us() / 1_000_000) as i64;
        transaction
            .execute(
                "INSERT INTO offline_message (server, username, stanza, created_at) VALUES ($1, $2, $3, $4)",
                &[&server, &username, &stanza, &now],
            )
            .map_err(error)?;
        transaction.commit().map_err(error)?;
        Ok(true)
    }

    fn offline_peek(&mut self, user: &BareJid, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let (server, username) = Self::user_key(user);
        let rows = self
            .client
            .query(
                "SELECT id, stanza FROM offline_message WHERE server = $1 AND username = $2 ORDER BY id LIMIT $3",
                &[&server, &username, &(max as i64)],
            )
            .map_err(error)?;
        Ok(rows.iter().map(|row| (row.get::<_, i64>(0) as u64, row.get(1))).collect())
    }

    fn offline_delete(&mut self, user: &BareJid, last: u64) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        self.client
            .execute(
                "DELETE FROM offline_message WHERE server = $1 AND username = $2 AND id <= $3",
                &[&server, &username, &(last as i64)],
            )
            .map(|_| ())
            .map_err(error)
    }

    fn data(&mut self, user: &BareJid, kind: DataKind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (server, username) = Self::user_key(user);
        let row = self
            .client
            .query_opt(
                "SELECT value FROM account_data WHERE server = $1 AND username = $2 AND kind = $3 AND key = $4",
                &[&server, &username, &kind.as_str(), &key],
            )
            .map_err(error)?;
        Ok(row.map(|row| row.get(0)))
    }

    fn set_data(&mut self, user: &BareJid, kind: DataKind, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let result = match value {
            Some(value) => self.client.execute(
                "INSERT INTO account_data (server, username, kind, key, value) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (server, username, kind, key) DO UPDATE SET value = EXCLUDED.value",
                &[&server, &username, &kind.as_str(), &key, &value],
            ),
            None => self.client.execute(
                "DELETE FROM account_data WHERE server = $1 AND username = $2 AND kind = $3 AND key = $4",
                &[&server, &username, &kind.as_str(), &key],
            ),
        };
        result.map(|_| ()).map_err(error)
    }

    fn archive_put(&mut self, user: &BareJid, message: &ArchivedMessage) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        self.client
            .execute(
                "INSERT INTO mam_message (server, username, id, timestamp_us, remote_bare, stanza) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &server,
                    &username,
                    &(message.id as i64),
                    &(message.timestamp_us as i64),
                    &message.with,
                    &message.stanza,
                ],
            )
            .map(|_| ())
            .map_err(error)
    }

    fn archive_trim(&mut self, user: &BareJid, keep: u64) -> Result<ArchiveTrim, StoreError> {
        let (server, username) = Self::user_key(user);
        let mut transaction = self.client.transaction().map_err(error)?;
        let count: i64 = transaction
            .query_one("SELECT COUNT(*) FROM mam_message WHERE server = $1 AND username = $2", &[&server, &username])
            .map_err(error)?
            .get(0);
        let count = count.max(0) as u64;
        if count <= keep {
            return Ok(ArchiveTrim { remaining: count, deleted: 0 });
        }
        let deleted = transaction
            .execute(
                "DELETE FROM mam_message WHERE server = $1 AND username = $2 AND id <= \
                 (SELECT id FROM mam_message WHERE server = $1 AND username = $2 ORDER BY id LIMIT 1 OFFSET $3)",
                &[&server, &username, &((count - keep - 1) as i64)],
            )
            .map_err(error)?;
        transaction.commit().map_err(error)?;
        Ok(ArchiveTrim { remaining: count - deleted, deleted })
    }

    fn archive_put_many(&mut self, rows: &[(BareJid, ArchivedMessage)]) -> Result<(), StoreError> {
        let mut transaction = self.client.transaction().map_err(error)?;
        let statement = transaction
            .prepare(
                "INSERT INTO mam_message (server, username, id, timestamp_us, remote_bare, stanza) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .map_err(error)?;
        for (user, message) in rows {
            let (server, username) = Self::user_key(user);
            transaction
                .execute(
                    &statement,
                    &[
                        &server,
                        &username,
                        &(message.id as i64),
                        &(message.timestamp_us as i64),
                        &message.with,
                        &message.stanza,
                    ],
                )
                .map_err(error)?;
        }
        transaction.commit().map_err(error)
    }

    fn archive_query(&mut self, user: &BareJid, query: &ArchiveQuery) -> Result<ArchivePage, StoreError> {
        let (server, username) = Self::user_key(user);
        let (server, username) = (server.to_owned(), username.to_owned());
        let with = query.with.clone().unwrap_or_default();
        let start = query.start_us.map_or(i64::MIN, |s| s as i64);
        let end = query.end_us.map_or(i64::MAX, |e| e as i64);
        let filters = "server = $1 AND username = $2 AND ($3 = '' OR remote_bare = $3) \
                       AND timestamp_us >= $4 AND timestamp_us <= $5";
        let count: i64 = self
            .client
            .query_one(
                &format!("SELECT COUNT(*) FROM mam_message WHERE {filters}"),
                &[&server, &username, &with, &start, &end],
            )
            .map_err(error)?
            .get(0);
        let after = query.after_id.map_or(i64::MIN, |a| a as i64);
        let before = query.before_id.map_or(i64::MAX, |b| b as i64);
        let order = if query.from_end { "DESC" } else { "ASC" };
        let limit = query.max as i64 + 1;
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT id, timestamp_us, remote_bare, stanza FROM mam_message WHERE {filters} \
                     AND id > $6 AND id < $7 ORDER BY id {order} LIMIT $8"
                ),
                &[&server, &username, &with, &start, &end, &after, &before, &limit],
            )
            .map_err(error)?;
        let messages: Vec<ArchivedMessage> = rows
            .iter()
            .map(|row| ArchivedMessage {
                id: row.get::<_, i64>(0) as u64,
                timestamp_us: row.get::<_, i64>(1) as u64,
                with: row.get(2),
                stanza: row.get(3),
            })
            .collect();
        Ok(ArchivePage::from_rows(messages, query, count as u64))
    }

    fn pep_publish(
        &mut self,
        user: &BareJid,
        item: &PepItem,
        access: &str,
        max_items: usize,
    ) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let mut transaction = self.client.transaction().map_err(error)?;
        transaction
            .execute(
                "INSERT INTO pep_node (server, username, node, access_model) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&server, &username, &item.node, &access],
            )
            .map_err(error)?;
        let model: String = transaction
            .query_one(
                "SELECT access_model FROM pep_node WHERE server = $1 AND username = $2 AND node = $3 FOR UPDATE",
                &[&server, &username, &item.node],
            )
            .map_err(error)?
            .get(0);
        if model != access {
            return Ok(false);
        }
        let newest: i64 = transaction
            .query_one(
                "SELECT COALESCE(MAX(published_us), 0) FROM pep_item WHERE server = $1 AND username = $2 AND node = $3",
                &[&server, &username, &item.node],
            )
            .map_err(error)?
            .get(0);
        let published = (now_us() as i64).max(newest + 1);
        transaction
            .execute(
                "INSERT INTO pep_item (server, username, node, item_id, payload, published_us) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (server, username, node, item_id) DO UPDATE SET payload = EXCLUDED.payload, \
                 published_us = EXCLUDED.published_us",
                &[&server, &username, &item.node, &item.id, &item.payload, &published],
            )
            .map_err(error)?;
        transaction
            .execute(
                "DELETE FROM pep_item WHERE server = $1 AND username = $2 AND node = $3 AND item_id NOT IN \
                 (SELECT item_id FROM pep_item WHERE server = $1 AND username = $2 AND node = $3 \
                  ORDER BY published_us DESC LIMIT $4)",
                &[&server, &username, &item.node, &(max_items as i64)],
            )
            .map_err(error)?;
        transaction.commit().map_err(error)?;
        Ok(true)
    }

    fn pep_items(&mut self, user: &BareJid, node: &str, max: usize) -> Result<Option<PepNode>, StoreError> {
        let (server, username) = Self::user_key(user);
        let Some(row) = self
            .client
            .query_opt(
                "SELECT access_model FROM pep_node WHERE server = $1 AND username = $2 AND node = $3",
                &[&server, &username, &node],
            )
            .map_err(error)?
        else {
            return Ok(None);
        };
        let items = self
            .client
            .query(
                "SELECT item_id, payload FROM pep_item WHERE server = $1 AND username = $2 AND node = $3 \
                 ORDER BY published_us DESC LIMIT $4",
                &[&server, &username, &node, &(max as i64)],
            )
            .map_err(error)?
            .iter()
            .map(|row| PepItem { node: node.to_owned(), id: row.get(0), payload: row.get(1) })
            .collect();
        Ok(Some(PepNode { access: row.get(0), items }))
    }

    fn pep_retract(&mut self, user: &BareJid, node: &str, id: &str) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        self.client
            .execute(
                "DELETE FROM pep_item WHERE server = $1 AND username = $2 AND node = $3 AND item_id = $4",
                &[&server, &username, &node, &id],
            )
            .map(|deleted| deleted == 1)
            .map_err(error)
    }

    fn pep_delete(&mut self, user: &BareJid, node: &str) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        let mut transaction = self.client.transaction().map_err(error)?;
        transaction
            .execute(
                "DELETE FROM pep_item WHERE server = $1 AND username = $2 AND node = $3",
                &[&server, &username, &node],
            )
            .map_err(error)?;
        let deleted = transaction
            .execute(
                "DELETE FROM pep_node WHERE server = $1 AND username = $2 AND node = $3",
                &[&server, &username, &node],
            )
            .map_err(error)?;
        transaction.commit().map_err(error)?;
        Ok(deleted == 1)
    }

    fn pep_nodes(&mut self, user: &BareJid) -> Result<Vec<(String, String)>, StoreError> {
        let (server, username) = Self::user_key(user);
        let rows = self
            .client
            .query(
                "SELECT node, access_model FROM pep_node WHERE server = $1 AND username = $2 ORDER BY node",
                &[&server, &username],
            )
            .map_err(error)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }
}

impl Storage for Postgres {
    fn register(&mut self, user: &BareJid, keys: &AccountKeys) -> Result<bool, StoreError> {
        let created = self.register_many(&[(user.clone(), keys.clone())])?;
        Ok(created == [true])
    }

    fn remove(&mut self, user: &BareJid) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        // Everything the account stored goes with it.
        let mut transaction = self.client.transaction().map_err(error)?;
        for table in super::ACCOUNT_TABLES {
            transaction
                .execute(&format!("DELETE FROM {table} WHERE server = $1 AND username = $2"), &[&server, &username])
                .map_err(error)?;
        }
        let removed = transaction
            .execute("DELETE FROM users WHERE server = $1 AND username = $2", &[&server, &username])
            .map_err(error)?;
        transaction.commit().map_err(error)?;
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
        // XEP-0484: a new password ends every FAST token of the account.
        self.client
            .execute("DELETE FROM fast_auth_token WHERE server = $1 AND username = $2", &[&key.0, &key.1])
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

/// Separates roster group names in one column; XML text cannot contain it.
const GROUP_SEPARATOR: char = '\u{1f}';

fn set_roster_version(
    transaction: &mut postgres::Transaction<'_>,
    server: &str,
    username: &str,
    version: u64,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "INSERT INTO roster_version (server, username, version) VALUES ($1, $2, $3) \
             ON CONFLICT (server, username) DO UPDATE SET version = EXCLUDED.version",
            &[&server, &username, &(version as i64)],
        )
        .map(|_| ())
        .map_err(error)
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
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

    /// Regression (a breaker's 3-node start on a new database): nodes that create the
    /// schema at the same moment all start; two of three failed with "db error" (a
    /// duplicate key in the catalog) before the schema took a lock.
    #[test]
    fn concurrent_first_starts_all_succeed() {
        let database = TestDatabase::new("race");
        let starts: Vec<_> = (0..6)
            .map(|_| {
                let url = database.url.clone();
                std::thread::spawn(move || Postgres::connect(&url).map(|_| ()))
            })
            .collect();
        for start in starts {
            start.join().unwrap().expect("every concurrent first start succeeds");
        }
    }

    /// A server error names its cause, not only "db error".
    #[test]
    fn a_server_error_names_its_cause() {
        let database = TestDatabase::new("describe");
        let mut store = Postgres::connect(&database.url).unwrap();
        let failure = store.client().batch_execute("SELECT * FROM no_such_table").unwrap_err();
        let text = describe(&failure);
        assert!(text.contains("no_such_table") && text.contains("42P01"), "{text}");
    }

    /// The IM data survives a new connection (the shared backend test).
    #[test]
    fn im_data_in_postgres() {
        let database = TestDatabase::new("im");
        crate::store::tests::im_data(&|| Box::new(Postgres::connect(&database.url).unwrap()));
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
