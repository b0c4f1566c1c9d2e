//! Cluster discovery through the database, on a blocking thread of its own.
//!
//! The table is MongooseIM's `discovery_nodes(cluster_name, node_name, node_num,
//! address, updated_timestamp)`, primary key `node_name`, unique `(cluster_name,
//! node_num)`. Each round, in one transaction: read the database's clock, select the
//! cluster's rows, update our row (or insert it with the first free `node_num >= 1`),
//! delete rows older than an hour, and hand the node list to the cores. Rounds run
//! every 5 s while the cluster forms (the first 5 minutes) and after a round that
//! found the node list changed, otherwise every `discovery_interval` to twice that
//! (default 30-60 s), and 1 s after an error. A database outage leaves the cluster
//! on its last node list, with `discoveryWorks: false`, and heals by itself.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_replicate::membership::DiscoveredNode;
use starling_shard::db::StoreError;
use starling_shard::Node;

/// Rows older than this are deleted (a node gone for an hour).
pub const EXPIRY_SECONDS: i64 = 3600;
const FORMING: Duration = Duration::from_secs(300);

/// A database that can run a discovery round.
pub trait Discovery: Send {
    fn round(&mut self, cluster: &str, node: &str, address: &str) -> Result<Vec<DiscoveredNode>, StoreError>;
}

/// The first free number `>= 1` among `taken`.
pub fn first_free(taken: &[u16]) -> u16 {
    let mut taken = taken.to_vec();
    taken.sort_unstable();
    let mut candidate = 1;
    for n in taken {
        if n == candidate {
            candidate += 1;
        } else if n > candidate {
            break;
        }
    }
    candidate
}

impl Discovery for crate::store::sqlite::Sqlite {
    fn round(&mut self, cluster: &str, node: &str, address: &str) -> Result<Vec<DiscoveredNode>, StoreError> {
        let connection = self.connection();
        let run = || -> rusqlite::Result<Vec<DiscoveredNode>> {
            // IMMEDIATE: the write lock is taken first, so a busy file waits (busy
            // timeout) instead of failing at once when a read lock cannot be upgraded
            // (found with three nodes starting on one file under load: one stayed
            // out of the cluster for 15 s, "database is locked" every round).
            let transaction =
                rusqlite::Transaction::new_unchecked(connection, rusqlite::TransactionBehavior::Immediate)?;
            let now: i64 = transaction.query_row("SELECT CAST(strftime('%s','now') AS INTEGER)", [], |r| r.get(0))?;
            let rows = select(&transaction, cluster)?;
            match rows.iter().find(|(name, ..)| name == node) {
                Some(_) => {
                    transaction.execute(
                        "UPDATE discovery_nodes SET updated_timestamp = ?1, address = ?2, cluster_name = ?3 WHERE node_name = ?4",
                        rusqlite::params![now, address, cluster, node],
                    )?;
                }
                None => {
                    transaction.execute("DELETE FROM discovery_nodes WHERE node_name = ?1", [node])?;
                    let taken: Vec<u16> = rows.iter().map(|(_, num, ..)| *num).collect();
                    transaction.execute(
                        "INSERT INTO discovery_nodes (node_name, cluster_name, updated_timestamp, node_num, address) VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![node, cluster, now, first_free(&taken), address],
                    )?;
                }
            }
            transaction.execute(
                "DELETE FROM discovery_nodes WHERE cluster_name = ?1 AND updated_timestamp < ?2",
                rusqlite::params![cluster, now - EXPIRY_SECONDS],
            )?;
            let rows = select(&transaction, cluster)?;
            transaction.commit()?;
            Ok(rows
                .into_iter()
                .filter(|(_, _, _, updated)| *updated >= now - EXPIRY_SECONDS)
                .map(|(name, node_num, address, _)| DiscoveredNode { name, node_num, address })
                .collect())
        };
        run().map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

fn select(transaction: &rusqlite::Transaction<'_>, cluster: &str) -> rusqlite::Result<Vec<(String, u16, String, i64)>> {
    let mut statement = transaction
        .prepare("SELECT node_name, node_num, address, updated_timestamp FROM discovery_nodes WHERE cluster_name = ?1 ORDER BY node_num")?;
    let rows = statement.query_map([cluster], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u16, r.get(2)?, r.get(3)?)))?;
    rows.collect()
}

impl Discovery for crate::store::postgres::Postgres {
    fn round(&mut self, cluster: &str, node: &str, address: &str) -> Result<Vec<DiscoveredNode>, StoreError> {
        let client = self.client();
        let mut run = || -> Result<Vec<DiscoveredNode>, postgres::Error> {
            let mut transaction = client.transaction()?;
            let now: i64 = transaction.query_one("SELECT CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)", &[])?.get(0);
            let rows = transaction.query(
                "SELECT node_name, node_num, address, updated_timestamp FROM discovery_nodes WHERE cluster_name = $1",
                &[&cluster],
            )?;
            let ours = rows.iter().any(|r| r.get::<_, String>(0) == node);
            if ours {
                transaction.execute(
                    "UPDATE discovery_nodes SET updated_timestamp = $1, address = $2 WHERE node_name = $3",
                    &[&now, &address, &node],
                )?;
            } else {
                transaction.execute("DELETE FROM discovery_nodes WHERE node_name = $1", &[&node])?;
                let taken: Vec<u16> = rows.iter().map(|r| r.get::<_, i32>(1) as u16).collect();
                transaction.execute(
                    "INSERT INTO discovery_nodes (node_name, cluster_name, updated_timestamp, node_num, address) VALUES ($1, $2, $3, $4, $5)",
                    &[&node, &cluster, &now, &(first_free(&taken) as i32), &address],
                )?;
            }
            transaction.execute(
                "DELETE FROM discovery_nodes WHERE cluster_name = $1 AND updated_timestamp < $2",
                &[&cluster, &(now - EXPIRY_SECONDS)],
            )?;
            let rows = transaction.query(
                "SELECT node_name, node_num, address FROM discovery_nodes WHERE cluster_name = $1 ORDER BY node_num",
                &[&cluster],
            )?;
            transaction.commit()?;
            Ok(rows
                .iter()
                .map(|r| DiscoveredNode { name: r.get(0), node_num: r.get::<_, i32>(1) as u16, address: r.get(2) })
                .collect())
        };
        // A unique-key race with another node inserting at the same moment fails the
        // round; the next round (1 s later) picks another number.
        run().map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// What discovery needs to know about this node.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    pub cluster: String,
    pub node: String,
    /// The replication address peers connect to, as written in the `address` column.
    pub address: String,
    /// The base interval between rounds once the cluster has formed.
    pub interval: Duration,
}

/// Opens a discovery connection (reconnects after failures).
pub type DiscoveryFactory = dyn Fn() -> Result<Box<dyn Discovery>, StoreError> + Send + Sync;

/// Runs the first round, retrying every second until it works (the node needs its
/// `node_num` before it can replicate). Returns the node list.
pub fn first_round(
    settings: &DiscoverySettings,
    factory: &DiscoveryFactory,
    give_up_after: Duration,
) -> Result<Vec<DiscoveredNode>, StoreError> {
    let deadline = Instant::now() + give_up_after;
    loop {
        let result = factory().and_then(|mut db| db.round(&settings.cluster, &settings.node, &settings.address));
        match result {
            Ok(nodes) => return Ok(nodes),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(error) => {
                log::warn!("discovery: first round failed, retrying: {error}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The discovery thread: rounds until `stop` receives (or its sender is dropped).
pub fn spawn(
    settings: DiscoverySettings,
    factory: Arc<DiscoveryFactory>,
    node: Arc<Node>,
    stop: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("starling-discovery".into())
        .spawn(move || {
            let started = Instant::now();
            let mut known: Vec<String> = Vec::new();
            let mut db: Option<Box<dyn Discovery>> = None;
            loop {
                if db.is_none() {
                    db = factory().map_err(|e| log::warn!("discovery: cannot open the database: {e}")).ok();
                }
                let result = match db.as_mut() {
                    Some(db) => db.round(&settings.cluster, &settings.node, &settings.address),
                    None => Err(StoreError::Unavailable("no connection".into())),
                };
                let wait = match result {
                    Ok(nodes) => {
                        // Keep rounds fast while the cluster forms and whenever the
                        // node list changed (more nodes may be starting): waiting for
                        // one peer to join was not enough, a staggered start of 16
                        // nodes then took up to a slow round (60 s) to form.
                        let mut names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
                        names.sort_unstable();
                        let changed = names != known;
                        known = names;
                        node.update_discovery(nodes);
                        if started.elapsed() < FORMING || changed {
                            Duration::from_secs(5).min(settings.interval)
                        } else {
                            settings.interval + Duration::from_millis(jitter(settings.interval.as_millis() as u64))
                        }
                    }
                    Err(error) => {
                        log::warn!("discovery: round failed, keeping the last node list: {error}");
                        db = None;
                        node.discovery_failed();
                        Duration::from_secs(1)
                    }
                };
                // Wait in 1 s slices: a node we have not discovered that linked to
                // us (a fresh node joining a formed cluster) starts a round at once
                // instead of at the next slow round.
                let until = Instant::now() + wait;
                loop {
                    let slice = until.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
                    if slice.is_zero() {
                        break;
                    }
                    match stop.recv_timeout(slice) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let status = node.cluster_status(&settings.node);
                    if status.available_nodes.iter().any(|n| !status.discovered_nodes.contains(n)) {
                        break;
                    }
                }
            }
        })
        .expect("spawning the discovery thread")
}

fn jitter(max: u64) -> u64 {
    use ring::rand::SecureRandom;
    let mut byte = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    u64::from_le_bytes(byte) % (max + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node numbers fill the first gap, from 1.
    #[test]
    fn first_free_number() {
        assert_eq!(first_free(&[]), 1);
        assert_eq!(first_free(&[1, 2, 3]), 4);
        assert_eq!(first_free(&[2, 3]), 1);
        assert_eq!(first_free(&[1, 3, 4]), 2);
    }

    /// Rounds on a real SQLite file: numbers are unique and stable, rows carry the
    /// replication address.
    #[test]
    fn sqlite_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut a = crate::store::sqlite::Sqlite::open(&path).unwrap();
        let mut b = crate::store::sqlite::Sqlite::open(&path).unwrap();
        rounds(&mut a, &mut b);
    }

    /// The same on PostgreSQL (a fresh database on the local server).
    #[test]
    fn postgres_rounds() {
        let database = crate::store::postgres::tests::TestDatabase::new("discovery");
        let mut a = crate::store::postgres::Postgres::connect(&database.url).unwrap();
        let mut b = crate::store::postgres::Postgres::connect(&database.url).unwrap();
        rounds(&mut a, &mut b);
    }

    /// Two connections of two nodes to one database.
    fn rounds(a: &mut dyn Discovery, b: &mut dyn Discovery) {
        let first = a.round("c", "a@h", "127.0.0.1:1").unwrap();
        assert_eq!(first, vec![DiscoveredNode { name: "a@h".into(), node_num: 1, address: "127.0.0.1:1".into() }]);
        let both = b.round("c", "b@h", "127.0.0.1:2").unwrap();
        assert_eq!(
            both.iter().map(|n| (n.name.as_str(), n.node_num)).collect::<Vec<_>>(),
            vec![("a@h", 1), ("b@h", 2)]
        );
        let again = a.round("c", "a@h", "127.0.0.1:9").unwrap();
        assert_eq!(again[0].node_num, 1, "a keeps its number");
        assert_eq!(again[0].address, "127.0.0.1:9");
        assert_eq!(b.round("other", "x@h", "").unwrap().len(), 1, "clusters are separate");
    }

    /// Rows not refreshed for an hour are deleted by the next round.
    #[test]
    fn old_rows_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = crate::store::sqlite::Sqlite::open(&dir.path().join("d.db")).unwrap();
        db.round("c", "old@h", "").unwrap();
        db.connection()
            .execute(
                "UPDATE discovery_nodes SET updated_timestamp = updated_timestamp - 3700 WHERE node_name = 'old@h'",
                [],
            )
            .unwrap();
        let nodes = db.round("c", "new@h", "").unwrap();
        assert_eq!(nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), vec!["new@h"]);
    }
}
