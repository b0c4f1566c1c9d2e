//! Bind 2 inline enables (XEP-0386) reach the module that offers the namespace,
//! through the runtime's dispatch, on one in-memory core with every module.

use std::sync::Arc;

use starling_modules::store::Store;
use starling_shard::db::{DbPool, DbThreads, StoreError, StoreFactory};
use starling_shard::fuzzing::CoreHarness;

fn harness(config: starling_modules::Config) -> (CoreHarness, DbThreads) {
    // These tests touch no storage: the store is unreachable on purpose.
    let factory: Arc<StoreFactory<dyn Store>> = Arc::new(|| Err(StoreError::Unavailable("not used".into())));
    let (db, threads) = DbPool::start(1, 64, factory);
    let settings = starling_shard::settings::Settings::one_core(starling_modules::build(config, db.clone()));
    (CoreHarness::new(settings, Arc::new(db)), threads)
}

fn carbons_on(harness: &CoreHarness) -> bool {
    let resources = harness.resources("fuzz@localhost");
    resources.iter().any(|r| &*r.full == "fuzz@localhost/a" && r.flags.has(starling_modules::flags::CARBONS))
}

/// XEP-0280's `<enable/>` inline turns carbons on for the session, as the IQ does.
#[test]
fn inline_enable_turns_carbons_on() {
    let (harness, _threads) = harness(starling_modules::Config::all());
    assert!(!carbons_on(&harness));
    let bound = harness.inline_enable(b"<enable xmlns='urn:xmpp:carbons:2'/>");
    assert_eq!(bound, Some(Vec::new()));
    assert!(carbons_on(&harness));
}

/// XEP-0352's `<inactive/>` inline starts the session inactive: presence waits
/// until `<active/>`.
#[test]
fn inline_inactive_holds_presence_until_active() {
    let (harness, _threads) = harness(starling_modules::Config::all());
    assert!(harness.inline_enable(b"<inactive xmlns='urn:xmpp:csi:0'/>").is_some());
    harness.push_to_sender(b"<presence from='peer@localhost/b' to='fuzz@localhost/a'/>");
    let held = String::from_utf8(harness.feed(b"")).unwrap();
    assert!(!held.contains("<presence"), "delivered while inactive: {held}");
    let released = String::from_utf8(harness.feed(b"<active xmlns='urn:xmpp:csi:0'/>")).unwrap();
    assert!(released.contains("<presence from='peer@localhost/b'"), "not released: {released}");
}

/// A namespace no enabled module offers is not taken (the Bind 2 feature does not
/// list it), and the module list says which are.
#[test]
fn an_absent_module_takes_no_inline_enable() {
    let mut config = starling_modules::Config::all();
    config.carbons = false;
    let (harness, _threads) = harness(config);
    assert_eq!(harness.inline_enable(b"<enable xmlns='urn:xmpp:carbons:2'/>"), None);
    assert_eq!(harness.inline_enable(b"<enable xmlns='urn:xmpp:sm:3'/>"), None);
    assert!(!carbons_on(&harness));
}
