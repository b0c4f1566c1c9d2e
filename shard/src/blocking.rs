//! The blocking side: a pool of database threads fed by a crossbeam channel, and the
//! storage interface the cores need.
//!
//! ```text
//!  core task --Job--> crossbeam channel --> DB thread (owns one Store connection)
//!      ^                                          |
//!      +---------- oneshot (wakes the task) ------+
//! ```
//! Blocking work never runs on a core: SQLite and PostgreSQL calls, and PBKDF2, run
//! here. A glommio task waiting on the reply is woken from the DB thread through
//! glommio's foreign-waker support (an eventfd write).

use std::future::Future;
use std::thread::JoinHandle;

use starling_wire::jid::BareJid;
use starling_wire::sasl::scram::{Credentials, Hash};

use crate::roster::{Roster, RosterItem};

/// Why a storage call failed. Every variant means "this request failed", never "the
/// node is broken": the caller answers with an XMPP error and carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (down, restarting, connection lost).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Query(String),
    /// The pool's threads are gone (the node is shutting down).
    #[error("storage pool stopped")]
    Stopped,
}

/// What the cores need from storage. Implemented by the server's SQLite and
/// PostgreSQL backends; one instance per DB thread, so `&mut self` and no `Sync`.
pub trait Store: Send {
    /// The stored SCRAM credentials of `user` for `hash`, `None` for no such user.
    fn credentials(&mut self, user: &BareJid, hash: Hash) -> Result<Option<Credentials>, StoreError>;

    /// Creates the account `user` with both SCRAM credentials (XEP-0077 in-band
    /// registration), unless `limit` (client address, interval) says this address
    /// registered an account less than the interval ago, on any node.
    fn create_account(
        &mut self,
        user: &BareJid,
        keys: (&Credentials, &Credentials),
        limit: Option<(&str, std::time::Duration)>,
    ) -> Result<Registered, StoreError> {
        let _ = (user, keys, limit);
        Err(unsupported())
    }

    // The IM data of an account (RFC 6121, XEPs). A backend that has not implemented
    // them yet answers `Query`, so clients get `internal-server-error`, never a crash.

    /// The roster and block list of `user` (empty for a new account).
    fn account(&mut self, user: &BareJid) -> Result<AccountData, StoreError> {
        let _ = user;
        Err(unsupported())
    }
    /// Inserts or replaces one roster item and sets the roster version.
    fn roster_put(&mut self, user: &BareJid, item: &RosterItem, version: u64) -> Result<(), StoreError> {
        let _ = (user, item, version);
        Err(unsupported())
    }
    /// Removes one roster item and sets the roster version.
    fn roster_delete(&mut self, user: &BareJid, jid: &str, version: u64) -> Result<(), StoreError> {
        let _ = (user, jid, version);
        Err(unsupported())
    }
    /// Adds JIDs to the block list (XEP-0191).
    fn block(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let _ = (user, jids);
        Err(unsupported())
    }
    /// Removes JIDs from the block list; an empty list removes every entry.
    fn unblock(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let _ = (user, jids);
        Err(unsupported())
    }
    /// Stores an offline message (XEP-0160); `false` when `user` already has `max`.
    fn offline_push(&mut self, user: &BareJid, stanza: &[u8], max: usize) -> Result<bool, StoreError> {
        let _ = (user, stanza, max);
        Err(unsupported())
    }
    /// Takes (returns and deletes) every offline message of `user`, oldest first.
    fn offline_take(&mut self, user: &BareJid) -> Result<Vec<Vec<u8>>, StoreError> {
        let _ = user;
        Err(unsupported())
    }
    /// One stored XML document of `user` (vCard, private XML, ...).
    fn data(&mut self, user: &BareJid, kind: DataKind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (user, kind, key);
        Err(unsupported())
    }
    /// Stores (`Some`) or deletes (`None`) one document of `user`.
    fn set_data(&mut self, user: &BareJid, kind: DataKind, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let _ = (user, kind, key, value);
        Err(unsupported())
    }
    /// Appends a message to the archive of `user` (XEP-0313).
    fn archive_put(&mut self, user: &BareJid, message: &ArchivedMessage) -> Result<(), StoreError> {
        let _ = (user, message);
        Err(unsupported())
    }
    /// One page of the archive of `user`.
    fn archive_query(&mut self, user: &BareJid, query: &ArchiveQuery) -> Result<ArchivePage, StoreError> {
        let _ = (user, query);
        Err(unsupported())
    }
    /// Publishes item `id` (replacing one with the same id) on the PEP node `node`
    /// of `user`, creating the node with `access` if needed; keeps the newest
    /// `max_items`. `Ok(false)`: the node exists with another access model.
    fn pep_publish(
        &mut self,
        user: &BareJid,
        item: &PepItem,
        access: &str,
        max_items: usize,
    ) -> Result<bool, StoreError> {
        let _ = (user, item, access, max_items);
        Err(unsupported())
    }
    /// The node's access model and its newest `max` items, newest first; `None` when
    /// the node does not exist.
    fn pep_items(&mut self, user: &BareJid, node: &str, max: usize) -> Result<Option<PepNode>, StoreError> {
        let _ = (user, node, max);
        Err(unsupported())
    }
    /// Removes one item; `false` when it was not there.
    fn pep_retract(&mut self, user: &BareJid, node: &str, id: &str) -> Result<bool, StoreError> {
        let _ = (user, node, id);
        Err(unsupported())
    }
    /// Deletes a node and its items; `false` when there was none.
    fn pep_delete(&mut self, user: &BareJid, node: &str) -> Result<bool, StoreError> {
        let _ = (user, node);
        Err(unsupported())
    }
    /// Every node of `user` with its access model, by name.
    fn pep_nodes(&mut self, user: &BareJid) -> Result<Vec<(String, String)>, StoreError> {
        let _ = user;
        Err(unsupported())
    }
}

/// One PEP item (XEP-0163).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepItem {
    pub node: String,
    pub id: String,
    /// The `<item>`'s child, as XML text.
    pub payload: Vec<u8>,
}

/// A PEP node as read: its access model and items, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PepNode {
    pub access: String,
    pub items: Vec<PepItem>,
}

fn unsupported() -> StoreError {
    StoreError::Query("not supported by this storage backend yet".into())
}

/// The outcome of [`Store::create_account`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    Created,
    /// The account exists.
    Exists,
    /// The client's address registered an account too recently.
    TooSoon,
}

/// What the home core loads for an account when it first needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountData {
    pub roster: Roster,
    /// Blocked JIDs (XEP-0191), normalised, in the order they were added.
    pub blocked: Vec<String>,
}

/// Kinds of per-account XML documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// XEP-0054 vCard-temp (key "").
    Vcard,
    /// XEP-0049 private XML storage (key: the child's `name namespace`).
    Private,
    /// XEP-0012 last activity (key ""; value `seconds-since-epoch status`).
    LastActivity,
    /// XEP-0313 archiving preferences (key "").
    ArchivePreferences,
}

impl DataKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Vcard => "vcard",
            DataKind::Private => "private",
            DataKind::LastActivity => "last",
            DataKind::ArchivePreferences => "mam_prefs",
        }
    }
}

/// One archived message (XEP-0313).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Unique in the archive across the cluster and increasing with time.
    pub id: u64,
    /// Microseconds since the UNIX epoch.
    pub timestamp_us: u64,
    /// The other party's bare JID.
    pub with: String,
    /// The message as delivered (stamped).
    pub stanza: Vec<u8>,
}

/// A page request against an archive (XEP-0313 filters, XEP-0059 paging).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    pub with: Option<String>,
    pub start_us: Option<u64>,
    pub end_us: Option<u64>,
    /// Only ids greater than this.
    pub after_id: Option<u64>,
    /// Only ids smaller than this.
    pub before_id: Option<u64>,
    /// The page is taken from the end (RSM `<before/>`, empty or with an id).
    pub from_end: bool,
    pub max: usize,
}

/// One page of archived messages, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePage {
    pub messages: Vec<ArchivedMessage>,
    /// No more messages in the paging direction.
    pub complete: bool,
    /// Messages matching the filters (without paging).
    pub count: u64,
}

impl ArchivePage {
    /// The page from up to `query.max + 1` rows read in paging order (the extra row
    /// only tells whether more follow).
    pub fn from_rows(mut rows: Vec<ArchivedMessage>, query: &ArchiveQuery, count: u64) -> ArchivePage {
        let complete = rows.len() <= query.max;
        rows.truncate(query.max);
        if query.from_end {
            rows.reverse();
        }
        ArchivePage { messages: rows, complete, count }
    }
}

/// A unit of work: given the thread's store (or why it could not be opened), runs and
/// replies; returns whether the store should be reopened (it reported `Unavailable`).
type Job = Box<dyn FnOnce(Result<&mut dyn Store, StoreError>) -> bool + Send>;

/// Opens one `Store` per DB thread; called again after a failure to reconnect.
pub type StoreFactory = dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync;

/// A pool of DB threads. Cheap to clone; the threads stop when every clone is gone.
#[derive(Clone)]
pub struct DbPool {
    jobs: crossbeam_channel::Sender<Job>,
    /// One queue per thread, for jobs that must run in order per key (one account's
    /// roster writes): a key always goes to the same thread.
    keyed: Vec<crossbeam_channel::Sender<Job>>,
}

/// The pool's threads. `join` stops them even while `DbPool` clones remain.
pub struct DbThreads {
    handles: Vec<JoinHandle<()>>,
    /// Dropping this tells the threads to stop.
    stop: Option<crossbeam_channel::Sender<()>>,
}

impl DbPool {
    /// Starts `workers` threads. A thread whose store cannot be opened keeps running:
    /// each job then gets `Unavailable` and the next job tries to connect again, so
    /// the pool heals when the database returns.
    pub fn start(workers: usize, queue_max: usize, factory: std::sync::Arc<StoreFactory>) -> (DbPool, DbThreads) {
        assert!(workers > 0, "a pool needs at least one thread");
        let (jobs, receiver) = crossbeam_channel::bounded::<Job>(queue_max);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut keyed = Vec::with_capacity(workers);
        let handles = (0..workers)
            .map(|i| {
                let receiver = receiver.clone();
                let (own, own_receiver) = crossbeam_channel::bounded::<Job>(queue_max);
                keyed.push(own);
                let stopped = stopped.clone();
                let factory = factory.clone();
                std::thread::Builder::new()
                    .name(format!("starling-db-{i}"))
                    .spawn(move || run_worker(&receiver, &own_receiver, &stopped, &*factory))
                    // Invariant: thread creation fails only when the process is out of resources at startup.
                    .expect("spawning a DB thread")
            })
            .collect();
        (DbPool { jobs, keyed }, DbThreads { handles, stop: Some(stop) })
    }

    /// Runs `work` on a DB thread and returns its result. Fails with `Stopped` when
    /// the pool is gone or its queue is full (backpressure: the caller answers
    /// `resource-constraint`/`internal-server-error` rather than queueing forever).
    pub fn run<T, F>(&self, work: F) -> impl Future<Output = Result<T, StoreError>> + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        Self::queue(&self.jobs, work)
    }

    /// Like [`DbPool::run`], but jobs with the same `key` run one after another in the
    /// order they were queued (this call queues at once, before the future is polled).
    pub fn run_for<T, F>(&self, key: &str, work: F) -> impl Future<Output = Result<T, StoreError>> + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let thread = crate::core::home_core(key, self.keyed.len());
        Self::queue(&self.keyed[thread], work)
    }

    /// Queues `work` for `key` like [`DbPool::run_for`], without a reply: for writes
    /// nobody waits on (archive, last activity), so the core spends no task and no
    /// channel on them. A failure is logged on the DB thread as `what`.
    pub fn submit_for<F>(&self, key: &str, what: &'static str, work: F)
    where
        F: FnOnce(&mut dyn Store) -> Result<(), StoreError> + Send + 'static,
    {
        let thread = crate::core::home_core(key, self.keyed.len());
        let job: Job = Box::new(move |store| {
            let result = store.and_then(work);
            if let Err(error) = &result {
                log::warn!("storage: {what} failed: {error}");
            }
            matches!(result, Err(StoreError::Unavailable(_)))
        });
        if self.keyed[thread].try_send(job).is_err() {
            log::warn!("storage: {what} dropped: the DB queue is full or stopped");
        }
    }

    fn queue<T, F>(
        jobs: &crossbeam_channel::Sender<Job>,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |store| {
            let result = store.and_then(work);
            let failed = matches!(result, Err(StoreError::Unavailable(_)));
            let _ = reply.send(result);
            failed
        });
        let queued = jobs.try_send(job).is_ok();
        async move {
            if !queued {
                return Err(StoreError::Stopped);
            }
            answer.await.unwrap_or(Err(StoreError::Stopped))
        }
    }
}

impl DbThreads {
    /// Stops the threads (jobs still queued are dropped; their callers see
    /// `Stopped`) and waits for them.
    pub fn join(mut self) {
        self.stop.take();
        for handle in self.handles {
            let _ = handle.join();
        }
    }
}

fn run_worker(
    receiver: &crossbeam_channel::Receiver<Job>,
    own: &crossbeam_channel::Receiver<Job>,
    stopped: &crossbeam_channel::Receiver<()>,
    factory: &StoreFactory,
) {
    let mut store: Option<Box<dyn Store>> = None;
    loop {
        let job = crossbeam_channel::select! {
            recv(receiver) -> job => match job {
                Ok(job) => job,
                Err(_) => return,
            },
            recv(own) -> job => match job {
                Ok(job) => job,
                Err(_) => return,
            },
            recv(stopped) -> _ => return,
        };
        if store.is_none() {
            match factory() {
                Ok(opened) => store = Some(opened),
                Err(error) => {
                    log::warn!("storage: cannot open the database: {error}");
                    job(Err(error));
                    continue;
                }
            }
        }
        // Invariant: set just above.
        let current = store.as_mut().expect("store opened");
        if job(Ok(current.as_mut())) {
            // Reconnect on the next job: the connection may be dead.
            store = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Fixed;

    impl Store for Fixed {
        fn credentials(&mut self, user: &BareJid, hash: Hash) -> Result<Option<Credentials>, StoreError> {
            if user.local() == Some("down") {
                return Err(StoreError::Unavailable("gone".into()));
            }
            Ok(Some(Credentials::derive(hash, "p", b"salt", std::num::NonZeroU32::new(1).unwrap())))
        }
    }

    /// Jobs run on the pool's threads and their results come back to an async caller;
    /// an unavailable database makes the worker reconnect, and jobs keep working.
    #[test]
    fn runs_jobs_and_reconnects() {
        let opened = Arc::new(AtomicUsize::new(0));
        let counter = opened.clone();
        let factory: Arc<StoreFactory> = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Fixed) as Box<dyn Store>)
        });
        let (pool, threads) = DbPool::start(1, 16, factory);
        let user: BareJid = "alice@localhost".parse().unwrap();
        let down: BareJid = "down@localhost".parse().unwrap();
        let ok = futures_lite::future::block_on(pool.run(move |store| store.credentials(&user, Hash::Sha256)));
        assert!(ok.unwrap().is_some());
        let failed = futures_lite::future::block_on(pool.run(move |store| store.credentials(&down, Hash::Sha1)));
        assert!(matches!(failed, Err(StoreError::Unavailable(_))));
        let user: BareJid = "bob@localhost".parse().unwrap();
        let again = futures_lite::future::block_on(pool.run(move |store| store.credentials(&user, Hash::Sha1)));
        assert!(again.is_ok());
        assert_eq!(opened.load(Ordering::SeqCst), 2, "reconnected after the failure");
        drop(pool);
        threads.join();
    }

    /// A factory that fails gives `Unavailable` per job, and the pool heals once the
    /// database is back.
    #[test]
    fn heals_when_database_returns() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        let factory: Arc<StoreFactory> = Arc::new(move || {
            if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StoreError::Unavailable("refused".into()))
            } else {
                Ok(Box::new(Fixed) as Box<dyn Store>)
            }
        });
        let (pool, threads) = DbPool::start(1, 16, factory);
        let results: Vec<bool> = (0..3)
            .map(|_| {
                let user: BareJid = "alice@localhost".parse().unwrap();
                futures_lite::future::block_on(pool.run(move |store| store.credentials(&user, Hash::Sha1))).is_ok()
            })
            .collect();
        assert_eq!(results, vec![false, false, true]);
        drop(pool);
        threads.join();
    }
}
