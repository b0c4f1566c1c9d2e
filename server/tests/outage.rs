//! Issue 9: nothing acknowledged is lost when the database goes away mid-run. A node
//! on PostgreSQL (through a proxy the test cuts and restores) keeps delivering
//! messages while the database is gone; once it is back, every delivered message is
//! in both archives (the batched writer retried what failed), and a message that
//! could not be stored offline was answered with an error, never only logged.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestNode};
use starling_server::config::Database;
use starling_server::store::{AccountKeys, Storage};

/// A fresh database on the local PostgreSQL server, dropped at the end.
struct PgDatabase(String);

impl PgDatabase {
    const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

    fn create(name: &str) -> PgDatabase {
        let mut admin = postgres::Client::connect(Self::ADMIN, postgres::NoTls)
            .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth)");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        PgDatabase(name.to_owned())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(Self::ADMIN, postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
        }
    }
}

fn archived(direct: &str) -> i64 {
    let mut client = postgres::Client::connect(direct, postgres::NoTls).unwrap();
    client.query_one("SELECT COUNT(*) FROM mam_message", &[]).unwrap().get(0)
}

/// 200 messages from alice to bob, the database cut after the first 100 and back
/// after the last: bob gets all 200 at once, and afterwards the archive holds both
/// sides of each, exactly once. While it was down, a message for an offline user got
/// an error (its storage failed) and was counted.
#[test]
fn a_database_outage_loses_no_archived_message() {
    let name = format!("starling_outage_{}", std::process::id());
    let _dropped_at_the_end = PgDatabase::create(&name);
    let direct = format!("host=127.0.0.1 port=5432 dbname={name} user=postgres");
    {
        let mut store = starling_server::store::postgres::Postgres::connect(&direct).unwrap();
        let keys = AccountKeys::from_password("secret", std::num::NonZeroU32::new(64).unwrap());
        for user in ["alice", "bob", "carol"] {
            store.register(&format!("{user}@localhost").parse().unwrap(), &keys).unwrap();
        }
    }
    let proxy = common::proxy::Proxy::start("127.0.0.1:5432".parse().unwrap());
    let url = format!("host=127.0.0.1 port={} dbname={name} user=postgres", proxy.port());
    let node = TestNode::start_with(|config| {
        config.database = Database::Postgres { url, workers: std::num::NonZeroUsize::new(2).unwrap() };
    });
    let mut alice = Client::login(node.c2s, "alice", "secret", "a");
    let mut bob = Client::login(node.c2s, "bob", "secret", "b");
    alice.presence();
    bob.presence();
    let send = |alice: &mut Client, bob: &mut Client, range: std::ops::Range<usize>| {
        for i in range.clone() {
            alice.send(&format!("<message to='bob@localhost' type='chat' id='m{i}'><body>n{i}</body></message>"));
        }
        for i in range {
            bob.expect(&format!("<body>n{i}</body>"));
        }
    };
    send(&mut alice, &mut bob, 0..100);
    proxy.cut();
    send(&mut alice, &mut bob, 100..200);
    alice.send("<message to='carol@localhost' type='chat' id='off'><body>for later</body></message>");
    let refused = alice.expect("id='off'");
    assert!(refused.contains("type='error'"), "storing offline failed, and the sender is told: {refused}");
    // Long enough for the archive writer to try (and fail) at least once.
    std::thread::sleep(Duration::from_secs(1));
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    // 200 delivered messages on both sides, and the one for carol on both sides: she
    // finds it in her archive although storing it offline failed.
    let mut rows = archived(&direct);
    while rows < 402 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        rows = archived(&direct);
    }
    assert_eq!(rows, 402, "every message in both archives, none twice");
    let metrics = common::http_get(node.admin, "/metrics");
    assert!(metrics.contains("starling_mam_write_retries_total"), "the retries are counted: {metrics}");
    assert!(metrics.contains("starling_offline_messages_refused_total 1"), "{metrics}");
}
