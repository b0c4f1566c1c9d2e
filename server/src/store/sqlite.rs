//! SQLite storage (rusqlite, bundled): the embedded default. WAL mode, so the DB
//! threads read concurrently while one writes; nodes on one host may share the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use starling_modules::roster::{Roster, RosterItem, Subscription};
use starling_modules::store::{
    AccountData, ArchivePage, ArchiveQuery, ArchiveTrim, ArchivedMessage, DataKind, PepItem, PepNode, Store,
};
use starling_shard::db::{AuthStore, FastToken, Registered, StoreError};
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

impl AuthStore for Sqlite {
    fn fast_tokens(&mut self, user: &BareJid, user_agent: &str, now: u64) -> Result<Vec<FastToken>, StoreError> {
        let (server, username) = Self::user_key(user);
        let row = self
            .connection
            .prepare_cached(
                "SELECT new_token, new_expire, current_token, current_expire FROM fast_auth_token \
                 WHERE server = ?1 AND username = ?2 AND user_agent_id = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![server, username, user_agent], |row| {
                    Ok([(row.get::<_, Option<String>>(0)?, row.get::<_, Option<i64>>(1)?), (row.get(2)?, row.get(3)?)])
                })
                .optional()
            })
            .map_err(query_error)?;
        Ok(super::live_fast_tokens(row, now))
    }

    fn issue_fast_token(&mut self, user: &BareJid, user_agent: &str, token: &FastToken) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .execute(
                "INSERT INTO fast_auth_token (server, username, user_agent_id, new_token, new_expire) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (server, username, user_agent_id) DO UPDATE SET \
                 current_token = new_token, current_expire = new_expire, \
                 new_token = excluded.new_token, new_expire = excluded.new_expire",
                params![server, username, user_agent, token.id, token.expires as i64],
            )
            .map_err(query_error)?;
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
        self.connection.execute_batch("BEGIN IMMEDIATE").map_err(query_error)?;
        let result = (|| {
            if let Some((address, interval)) = limit {
                let since = now - interval.as_secs() as i64;
                self.connection
                    .execute("DELETE FROM registration_address WHERE registered_at <= ?1", params![since])
                    .map_err(query_error)?;
                let recent = self
                    .connection
                    .prepare_cached("SELECT 1 FROM registration_address WHERE address = ?1")
                    .and_then(|mut s| s.exists(params![address]))
                    .map_err(query_error)?;
                if recent {
                    return Ok(Registered::TooSoon);
                }
            }
            if !self.register(user, &keys)? {
                return Ok(Registered::Exists);
            }
            if let Some((address, _)) = limit {
                self.connection
                    .execute(
                        "INSERT OR REPLACE INTO registration_address (address, registered_at) VALUES (?1, ?2)",
                        params![address, now],
                    )
                    .map_err(query_error)?;
            }
            Ok(Registered::Created)
        })();
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.connection.execute_batch(end).map_err(query_error)?;
        result
    }

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

impl Store for Sqlite {
    fn account(&mut self, user: &BareJid) -> Result<AccountData, StoreError> {
        let (server, username) = Self::user_key(user);
        let version = self
            .connection
            .prepare_cached("SELECT version FROM roster_version WHERE server = ?1 AND username = ?2")
            .and_then(|mut s| s.query_row(params![server, username], |row| row.get::<_, i64>(0)).optional())
            .map_err(query_error)?
            .unwrap_or(0) as u64;
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT jid, name, subscription, ask, pending_in, approved, visible, groups FROM rosterusers \
                 WHERE server = ?1 AND username = ?2 ORDER BY jid",
            )
            .map_err(query_error)?;
        let items = statement
            .query_map(params![server, username], |row| {
                let groups: String = row.get(7)?;
                Ok(RosterItem {
                    jid: row.get(0)?,
                    name: row.get(1)?,
                    subscription: Subscription::parse(&row.get::<_, String>(2)?),
                    ask: row.get(3)?,
                    pending_in: row.get(4)?,
                    approved: row.get(5)?,
                    visible: row.get(6)?,
                    groups: groups.split(GROUP_SEPARATOR).filter(|g| !g.is_empty()).map(str::to_owned).collect(),
                })
            })
            .map_err(query_error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(query_error)?;
        let mut statement = self
            .connection
            .prepare_cached("SELECT jid FROM blocking WHERE server = ?1 AND username = ?2 ORDER BY added_at, jid")
            .map_err(query_error)?;
        let blocked = statement
            .query_map(params![server, username], |row| row.get::<_, String>(0))
            .map_err(query_error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(query_error)?;
        Ok(AccountData { roster: Roster { version, items }, blocked })
    }

    fn roster_put(&mut self, user: &BareJid, item: &RosterItem, version: u64) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let groups = item.groups.join(&GROUP_SEPARATOR.to_string());
        self.in_transaction(|connection| {
            connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO rosterusers (server, username, jid, name, subscription, ask, pending_in, \
                     approved, visible, groups) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    server,
                    username,
                    item.jid,
                    item.name,
                    item.subscription.as_str(),
                    item.ask,
                    item.pending_in,
                    item.approved,
                    item.visible,
                    groups
                ])?;
            set_roster_version(connection, server, username, version)
        })
    }

    fn roster_delete(&mut self, user: &BareJid, jid: &str, version: u64) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        self.in_transaction(|connection| {
            connection
                .prepare_cached("DELETE FROM rosterusers WHERE server = ?1 AND username = ?2 AND jid = ?3")?
                .execute(params![server, username, jid])?;
            set_roster_version(connection, server, username, version)
        })
    }

    fn block(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let now = now_us() as i64;
        self.in_transaction(|connection| {
            let mut statement = connection.prepare_cached(
                "INSERT OR IGNORE INTO blocking (server, username, jid, added_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for jid in jids {
                statement.execute(params![server, username, jid, now])?;
            }
            Ok(())
        })
    }

    fn unblock(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        self.in_transaction(|connection| {
            if jids.is_empty() {
                connection
                    .prepare_cached("DELETE FROM blocking WHERE server = ?1 AND username = ?2")?
                    .execute(params![server, username])?;
                return Ok(());
            }
            let mut statement =
                connection.prepare_cached("DELETE FROM blocking WHERE server = ?1 AND username = ?2 AND jid = ?3")?;
            for jid in jids {
                statement.execute(params![server, username, jid])?;
            }
            Ok(())
        })
    }

    fn offline_push(&mut self, user: &BareJid, stanza: &[u8], max: usize) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        self.in_transaction(|connection| {
            let stored: i64 = connection
                .prepare_cached("SELECT COUNT(*) FROM offline_message WHERE server = ?1 AND username = ?2")?
                .query_row(params![server, username], |row| row.get(0))?;
            if stored as usize >= max {
                return Ok(false);
            }
            connection
                .prepare_cached(
                    "INSERT INTO offline_message (server, username, stanza, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![server, username, stanza, (now_us() / 1_000_000) as i64])?;
            Ok(true)
        })
    }

    fn offline_peek(&mut self, user: &BareJid, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .prepare_cached(
                "SELECT id, stanza FROM offline_message WHERE server = ?1 AND username = ?2 ORDER BY id LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![server, username, max as i64], |row| {
                    Ok((row.get::<_, i64>(0)? as u64, row.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(query_error)
    }

    fn offline_delete(&mut self, user: &BareJid, last: u64) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .prepare_cached("DELETE FROM offline_message WHERE server = ?1 AND username = ?2 AND id <= ?3")
            .and_then(|mut s| s.execute(params![server, username, last as i64]))
            .map(|_| ())
            .map_err(query_error)
    }

    fn archive_put_many(&mut self, rows: &[(BareJid, ArchivedMessage)]) -> Result<(), StoreError> {
        self.in_transaction(|connection| {
            let mut statement = connection.prepare_cached(
                "INSERT OR IGNORE INTO mam_message (server, username, id, timestamp_us, remote_bare, stanza) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (user, message) in rows {
                let (server, username) = Self::user_key(user);
                statement.execute(params![
                    server,
                    username,
                    message.id as i64,
                    message.timestamp_us as i64,
                    message.with,
                    message.stanza
                ])?;
            }
            Ok(())
        })
    }
    fn archive_trim(&mut self, user: &BareJid, keep: u64) -> Result<ArchiveTrim, StoreError> {
        let (server, username) = Self::user_key(user);
        self.in_transaction(|connection| {
            let count: i64 = connection
                .prepare_cached("SELECT COUNT(*) FROM mam_message WHERE server = ?1 AND username = ?2")?
                .query_row(params![server, username], |row| row.get(0))?;
            let count = count.max(0) as u64;
            if count <= keep {
                return Ok(ArchiveTrim { remaining: count, deleted: 0 });
            }
            // The newest id to delete: the (count - keep)th oldest.
            let deleted = connection
                .prepare_cached(
                    "DELETE FROM mam_message WHERE server = ?1 AND username = ?2 AND id <= \
                     (SELECT id FROM mam_message WHERE server = ?1 AND username = ?2 ORDER BY id LIMIT 1 OFFSET ?3)",
                )?
                .execute(params![server, username, (count - keep - 1) as i64])? as u64;
            Ok(ArchiveTrim { remaining: count - deleted, deleted })
        })
    }

    fn data(&mut self, user: &BareJid, kind: DataKind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .prepare_cached(
                "SELECT value FROM account_data WHERE server = ?1 AND username = ?2 AND kind = ?3 AND key = ?4",
            )
            .and_then(|mut s| s.query_row(params![server, username, kind.as_str(), key], |row| row.get(0)).optional())
            .map_err(query_error)
    }

    fn set_data(&mut self, user: &BareJid, kind: DataKind, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        let result = match value {
            Some(value) => self
                .connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO account_data (server, username, kind, key, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![server, username, kind.as_str(), key, value])),
            None => self
                .connection
                .prepare_cached(
                    "DELETE FROM account_data WHERE server = ?1 AND username = ?2 AND kind = ?3 AND key = ?4",
                )
                .and_then(|mut s| s.execute(params![server, username, kind.as_str(), key])),
        };
        result.map(|_| ()).map_err(query_error)
    }

    fn archive_put(&mut self, user: &BareJid, message: &ArchivedMessage) -> Result<(), StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .prepare_cached(
                "INSERT OR IGNORE INTO mam_message (server, username, id, timestamp_us, remote_bare, stanza) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    server,
                    username,
                    message.id as i64,
                    message.timestamp_us as i64,
                    message.with,
                    message.stanza
                ])
            })
            .map(|_| ())
            .map_err(query_error)
    }

    fn archive_query(&mut self, user: &BareJid, query: &ArchiveQuery) -> Result<ArchivePage, StoreError> {
        let (server, username) = Self::user_key(user);
        let mut filters = String::from("server = ?1 AND username = ?2");
        let mut values: Vec<rusqlite::types::Value> = vec![server.to_owned().into(), username.to_owned().into()];
        let mut add = |clause: &str, value: rusqlite::types::Value| {
            values.push(value);
            filters.push_str(&format!(" AND {clause} ?{}", values.len()));
        };
        if let Some(with) = &query.with {
            add("remote_bare =", with.clone().into());
        }
        if let Some(start) = query.start_us {
            add("timestamp_us >=", (start as i64).into());
        }
        if let Some(end) = query.end_us {
            add("timestamp_us <=", (end as i64).into());
        }
        let count: i64 = self
            .connection
            .query_row(
                &format!("SELECT COUNT(*) FROM mam_message WHERE {filters}"),
                rusqlite::params_from_iter(values.iter()),
                |row| row.get(0),
            )
            .map_err(query_error)?;
        let mut add = |clause: &str, value: rusqlite::types::Value| {
            values.push(value);
            filters.push_str(&format!(" AND {clause} ?{}", values.len()));
        };
        if let Some(after) = query.after_id {
            add("id >", (after as i64).into());
        }
        if let Some(before) = query.before_id {
            add("id <", (before as i64).into());
        }
        let order = if query.from_end { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT id, timestamp_us, remote_bare, stanza FROM mam_message WHERE {filters} ORDER BY id {order} LIMIT {}",
            query.max + 1
        );
        let messages = self
            .connection
            .prepare(&sql)
            .and_then(|mut s| {
                s.query_map(rusqlite::params_from_iter(values.iter()), |row| {
                    Ok(ArchivedMessage {
                        id: row.get::<_, i64>(0)? as u64,
                        timestamp_us: row.get::<_, i64>(1)? as u64,
                        with: row.get(2)?,
                        stanza: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(query_error)?;
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
        self.in_transaction(|connection| {
            let existing: Option<String> = connection
                .prepare_cached("SELECT access_model FROM pep_node WHERE server = ?1 AND username = ?2 AND node = ?3")?
                .query_row(params![server, username, item.node], |row| row.get(0))
                .optional()?;
            match existing {
                Some(model) if model != access => return Ok(false),
                Some(_) => {}
                None => {
                    connection
                        .prepare_cached(
                            "INSERT INTO pep_node (server, username, node, access_model) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![server, username, item.node, access])?;
                }
            }
            let newest: i64 = connection
                .prepare_cached(
                    "SELECT COALESCE(MAX(published_us), 0) FROM pep_item WHERE server = ?1 AND username = ?2 AND node = ?3",
                )?
                .query_row(params![server, username, item.node], |row| row.get(0))?;
            let published = (now_us() as i64).max(newest + 1);
            connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO pep_item (server, username, node, item_id, payload, published_us) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![server, username, item.node, item.id, item.payload, published])?;
            connection
                .prepare_cached(
                    "DELETE FROM pep_item WHERE server = ?1 AND username = ?2 AND node = ?3 AND item_id NOT IN \
                     (SELECT item_id FROM pep_item WHERE server = ?1 AND username = ?2 AND node = ?3 \
                      ORDER BY published_us DESC LIMIT ?4)",
                )?
                .execute(params![server, username, item.node, max_items as i64])?;
            Ok(true)
        })
    }

    fn pep_items(&mut self, user: &BareJid, node: &str, max: usize) -> Result<Option<PepNode>, StoreError> {
        let (server, username) = Self::user_key(user);
        let access: Option<String> = self
            .connection
            .prepare_cached("SELECT access_model FROM pep_node WHERE server = ?1 AND username = ?2 AND node = ?3")
            .and_then(|mut s| s.query_row(params![server, username, node], |row| row.get(0)).optional())
            .map_err(query_error)?;
        let Some(access) = access else { return Ok(None) };
        let items = self
            .connection
            .prepare_cached(
                "SELECT item_id, payload FROM pep_item WHERE server = ?1 AND username = ?2 AND node = ?3 \
                 ORDER BY published_us DESC LIMIT ?4",
            )
            .and_then(|mut s| {
                s.query_map(params![server, username, node, max as i64], |row| {
                    Ok(PepItem { node: node.to_owned(), id: row.get(0)?, payload: row.get(1)? })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(query_error)?;
        Ok(Some(PepNode { access, items }))
    }

    fn pep_retract(&mut self, user: &BareJid, node: &str, id: &str) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .prepare_cached("DELETE FROM pep_item WHERE server = ?1 AND username = ?2 AND node = ?3 AND item_id = ?4")
            .and_then(|mut s| s.execute(params![server, username, node, id]))
            .map(|deleted| deleted == 1)
            .map_err(query_error)
    }

    fn pep_delete(&mut self, user: &BareJid, node: &str) -> Result<bool, StoreError> {
        let (server, username) = Self::user_key(user);
        self.in_transaction(|connection| {
            connection
                .prepare_cached("DELETE FROM pep_item WHERE server = ?1 AND username = ?2 AND node = ?3")?
                .execute(params![server, username, node])?;
            let deleted = connection
                .prepare_cached("DELETE FROM pep_node WHERE server = ?1 AND username = ?2 AND node = ?3")?
                .execute(params![server, username, node])?;
            Ok(deleted == 1)
        })
    }

    fn pep_nodes(&mut self, user: &BareJid) -> Result<Vec<(String, String)>, StoreError> {
        let (server, username) = Self::user_key(user);
        self.connection
            .prepare_cached("SELECT node, access_model FROM pep_node WHERE server = ?1 AND username = ?2 ORDER BY node")
            .and_then(|mut s| {
                s.query_map(params![server, username], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(query_error)
    }
}

/// Separates roster group names in one column; XML text cannot contain it.
const GROUP_SEPARATOR: char = '\u{1f}';

fn set_roster_version(connection: &Connection, server: &str, username: &str, version: u64) -> rusqlite::Result<()> {
    connection
        .prepare_cached("INSERT OR REPLACE INTO roster_version (server, username, version) VALUES (?1, ?2, ?3)")?
        .execute(params![server, username, version as i64])?;
    Ok(())
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Sqlite {
    /// Runs `work` in one immediate transaction (all or nothing).
    fn in_transaction<T>(&mut self, work: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let transaction =
            self.connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(query_error)?;
        let result = work(&transaction).map_err(query_error)?;
        transaction.commit().map_err(query_error)?;
        Ok(result)
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
        // Everything the account stored goes with it (as `mongooseimctl unregister` does).
        self.in_transaction(|connection| {
            for table in super::ACCOUNT_TABLES {
                connection.execute(
                    &format!("DELETE FROM {table} WHERE server = ?1 AND username = ?2"),
                    params![server, username],
                )?;
            }
            connection.execute("DELETE FROM users WHERE server = ?1 AND username = ?2", params![server, username])
        })
        .map(|removed| removed == 1)
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
        // XEP-0484: a new password ends every FAST token of the account.
        self.connection
            .execute("DELETE FROM fast_auth_token WHERE server = ?1 AND username = ?2", params![server, username])
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

    /// The IM data survives reopening the file (the shared backend test).
    #[test]
    fn im_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        crate::store::tests::im_data(&|| Box::new(Sqlite::open(&path).unwrap()));
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
