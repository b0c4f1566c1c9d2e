//! Arbitrary client bytes, after authentication and bind, through one in-memory
//! core's full handling: the framer, the from-check and stamping, every module's
//! hooks and IQ handlers (roster, subscriptions, presence, blocking, carbons, MAM
//! queries with data forms, PEP publish-options, vCards, private storage, disco,
//! last activity, CSI), delivery to a second bound session and to offline accounts,
//! with a real SQLite store. Invariants: no panic, and whatever reaches the clients is
//! well-formed XML (our framer takes it back).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use starling_shard::db::{DbPool, DbThreads, StoreFactory};
use starling_shard::fuzzing::CoreHarness;
use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;

thread_local! {
    static HARNESS: CoreHarness = harness();
}

/// Kept for the process's life: the database file and its threads.
static KEEP: OnceLock<(tempfile::TempDir, DbThreads)> = OnceLock::new();

fn harness() -> CoreHarness {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("fuzz.db");
    {
        use starling_server::store::{AccountKeys, Storage};
        let mut store = starling_server::store::sqlite::Sqlite::open(&path).expect("a SQLite file");
        let keys = AccountKeys::from_password("secret", std::num::NonZeroU32::new(1).expect("nonzero"));
        for user in ["fuzz", "peer", "other"] {
            store.register(&format!("{user}@localhost").parse().expect("a JID"), &keys).expect("an account");
        }
    }
    let factory: Arc<StoreFactory<dyn starling_modules::Store>> =
        Arc::new(starling_server::store::sqlite::Sqlite::factory(path));
    let (db, threads) = DbPool::start(1, 65_536, factory);
    let _ = KEEP.set((dir, threads));
    let mut modules = starling_modules::Config::all();
    if let Some(mam) = &mut modules.mam {
        mam.flush_interval = std::time::Duration::from_millis(1);
    }
    let settings = starling_shard::settings::Settings::one_core(starling_modules::build(modules, db.clone()));
    CoreHarness::new(settings, Arc::new(db))
}

fuzz_target!(|data: &[u8]| {
    let out = HARNESS.with(|harness| harness.feed(data));
    // What the server sends is well-formed (its own framer takes it back whole).
    let mut framer = Framer::new(FramerLimits { stanza_bytes_max: 16 * 1024 * 1024, ..FramerLimits::DEFAULT });
    let mut header: &[u8] =
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' version='1.0'>";
    let _ = framer.next(&mut header);
    let mut rest = &out[..];
    loop {
        match framer.next(&mut rest) {
            Ok(Some(Frame::Element(_))) => {}
            Ok(None) => break,
            other => panic!("the server sent something malformed: {other:?}"),
        }
    }
});
