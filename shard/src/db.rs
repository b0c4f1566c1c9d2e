//! The database threads: a pool of threads fed by crossbeam channels, each owning one
//! connection to the store, and the part of storage the runtime itself needs
//! (credentials and account creation, [`AuthStore`]).
//!
//! ```text
//!  core task --Job--> crossbeam channel --> DB thread (owns one store connection)
//!      ^                                          |
//!      +---------- oneshot (wakes the task) ------+
//! ```
//! Blocking work never runs on a core: SQLite and PostgreSQL calls, and PBKDF2, run
//! here. A glommio task waiting on the reply is woken from the DB thread through
//! glommio's foreign-waker support (an eventfd write).
//!
//! The pool is generic over the store's trait object `S`: the feature layer defines
//! the full store interface (rosters, archives, ...) as a trait extending
//! [`AuthStore`], the server implements it, and the runtime sees only [`Accounts`].

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::thread::JoinHandle;

use starling_wire::jid::BareJid;
use starling_wire::sasl::scram::{Credentials, Hash};

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
    /// The pool's threads are gone (the node is shutting down) or its queue is full.
    #[error("storage pool stopped or full")]
    Stopped,
}

/// What the runtime needs from storage: authentication and in-band registration.
/// One instance per DB thread, so `&mut self` and no `Sync`.
pub trait AuthStore: Send {
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
        Err(StoreError::Query("registration is not supported by this storage backend".into()))
    }

    /// XEP-0484: the FAST tokens of `user` for one client install (`user_agent`, its
    /// XEP-0388 user-agent id) not expired at `now` (seconds): the newest first.
    fn fast_tokens(&mut self, user: &BareJid, user_agent: &str, now: u64) -> Result<Vec<FastToken>, StoreError> {
        let _ = (user, user_agent, now);
        Ok(Vec::new())
    }

    /// XEP-0484: records `token` as the newest for `user` and `user_agent`; the
    /// previous newest stays valid as the one before it (rotation).
    fn issue_fast_token(&mut self, user: &BareJid, user_agent: &str, token: &FastToken) -> Result<(), StoreError> {
        let _ = (user, user_agent, token);
        Err(StoreError::Query("FAST tokens are not supported by this storage backend".into()))
    }
}

/// A XEP-0484 FAST token's record: its id (hex; the token is derived from it with the
/// node's secret, so a stored record alone logs nobody in) and its expiry in seconds since the UNIX epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastToken {
    pub id: String,
    pub expires: u64,
}

/// The outcome of [`AuthStore::create_account`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    Created,
    /// The account exists.
    Exists,
    /// The client's address registered an account too recently.
    TooSoon,
}

/// A storage answer a core awaits.
pub type DbFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>>>>;

/// The runtime's view of storage, object-safe so a core holds it without knowing the
/// store's full interface. Implemented by every [`DbPool`] whose store can
/// authenticate; PBKDF2 runs on the DB thread, never on a core.
pub trait Accounts: Send + Sync {
    /// [`AuthStore::credentials`].
    fn credentials(&self, user: BareJid, hash: Hash) -> DbFuture<Option<Credentials>>;
    /// Checks a PLAIN password against the stored SCRAM-SHA-256 keys; an unknown
    /// user costs the same PBKDF2 (decoy credentials from `decoy_secret`).
    fn verify_password(
        &self,
        user: BareJid,
        password: String,
        decoy_secret: Vec<u8>,
        iterations: NonZeroU32,
    ) -> DbFuture<bool>;
    /// XEP-0077: derives both SCRAM keys for `password` and creates `user`, unless
    /// `limit` (client address, interval) forbids it (see [`AuthStore::create_account`]).
    fn register(
        &self,
        user: BareJid,
        password: String,
        iterations: NonZeroU32,
        limit: Option<(String, std::time::Duration)>,
    ) -> DbFuture<Registered>;
    /// Whether the account `user` exists.
    fn exists(&self, user: BareJid) -> DbFuture<bool>;
    /// [`AuthStore::fast_tokens`].
    fn fast_tokens(&self, user: BareJid, user_agent: String, now: u64) -> DbFuture<Vec<FastToken>>;
    /// [`AuthStore::issue_fast_token`].
    fn issue_fast_token(&self, user: BareJid, user_agent: String, token: FastToken) -> DbFuture<()>;
}

impl<S: ?Sized + AuthStore + Send + 'static> Accounts for DbPool<S> {
    fn credentials(&self, user: BareJid, hash: Hash) -> DbFuture<Option<Credentials>> {
        Box::pin(self.run(move |store| store.credentials(&user, hash)))
    }

    fn verify_password(
        &self,
        user: BareJid,
        password: String,
        decoy_secret: Vec<u8>,
        iterations: NonZeroU32,
    ) -> DbFuture<bool> {
        Box::pin(self.run(move |store| {
            Ok(match store.credentials(&user, Hash::Sha256)? {
                Some(credentials) => credentials.verify_password(&password),
                None => {
                    let decoy = Credentials::decoy(Hash::Sha256, user.as_str(), &decoy_secret, iterations);
                    let _ = decoy.verify_password(&password);
                    false
                }
            })
        }))
    }

    fn register(
        &self,
        user: BareJid,
        password: String,
        iterations: NonZeroU32,
        limit: Option<(String, std::time::Duration)>,
    ) -> DbFuture<Registered> {
        Box::pin(self.run(move |store| {
            let derive = |hash| {
                use ring::rand::SecureRandom;
                let mut salt = [0u8; 16];
                ring::rand::SystemRandom::new()
                    .fill(&mut salt)
                    .map(|_| Credentials::derive(hash, &password, &salt, iterations))
                    .map_err(|_| StoreError::Query("no randomness".into()))
            };
            let (sha1, sha256) = (derive(Hash::Sha1)?, derive(Hash::Sha256)?);
            let limit = limit.as_ref().map(|(address, interval)| (address.as_str(), *interval));
            store.create_account(&user, (&sha1, &sha256), limit)
        }))
    }

    fn exists(&self, user: BareJid) -> DbFuture<bool> {
        Box::pin(self.run(move |store| Ok(store.credentials(&user, Hash::Sha256)?.is_some())))
    }

    fn fast_tokens(&self, user: BareJid, user_agent: String, now: u64) -> DbFuture<Vec<FastToken>> {
        Box::pin(self.run(move |store| store.fast_tokens(&user, &user_agent, now)))
    }

    fn issue_fast_token(&self, user: BareJid, user_agent: String, token: FastToken) -> DbFuture<()> {
        Box::pin(self.run(move |store| store.issue_fast_token(&user, &user_agent, &token)))
    }
}

/// A unit of work: given the thread's store (or why it could not be opened), runs and
/// replies; returns whether the store should be reopened (it reported `Unavailable`).
type Job<S> = Box<dyn FnOnce(Result<&mut S, StoreError>) -> bool + Send>;

/// Opens one store per DB thread; called again after a failure to reconnect.
pub type StoreFactory<S> = dyn Fn() -> Result<Box<S>, StoreError> + Send + Sync;

/// A pool of DB threads. Cheap to clone; the threads stop when every clone is gone.
pub struct DbPool<S: ?Sized> {
    jobs: crossbeam_channel::Sender<Job<S>>,
    /// One queue per thread, for jobs that must run in order per key (one account's
    /// roster writes): a key always goes to the same thread.
    keyed: Vec<crossbeam_channel::Sender<Job<S>>>,
}

impl<S: ?Sized> Clone for DbPool<S> {
    fn clone(&self) -> Self {
        DbPool { jobs: self.jobs.clone(), keyed: self.keyed.clone() }
    }
}

/// The pool's threads. `join` stops them even while `DbPool` clones remain.
pub struct DbThreads {
    handles: Vec<JoinHandle<()>>,
    /// Dropping this tells the threads to stop.
    stop: Option<crossbeam_channel::Sender<()>>,
}

impl<S: ?Sized + Send + 'static> DbPool<S> {
    /// Starts `workers` threads with queues of `queue_max` jobs. A thread whose store
    /// cannot be opened keeps running: each job then gets `Unavailable` and the next
    /// job tries to connect again, so the pool heals when the database returns.
    pub fn start(workers: usize, queue_max: usize, factory: std::sync::Arc<StoreFactory<S>>) -> (DbPool<S>, DbThreads) {
        assert!(workers > 0, "a pool needs at least one thread");
        let (jobs, receiver) = crossbeam_channel::bounded::<Job<S>>(queue_max);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut keyed = Vec::with_capacity(workers);
        let handles = (0..workers)
            .map(|i| {
                let receiver = receiver.clone();
                let (own, own_receiver) = crossbeam_channel::bounded::<Job<S>>(queue_max);
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
    /// the pool is gone or its queue is full (the caller answers with an error
    /// rather than queueing without bound).
    pub fn run<T, F>(&self, work: F) -> impl Future<Output = Result<T, StoreError>> + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        Self::queue(&self.jobs, work)
    }

    /// Like [`DbPool::run`], but jobs with the same `key` run one after another in the
    /// order they were queued (this call queues at once, before the future is polled).
    pub fn run_for<T, F>(&self, key: &str, work: F) -> impl Future<Output = Result<T, StoreError>> + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        Self::queue(&self.keyed[self.thread_of(key)], work)
    }

    /// The thread that runs `key`'s jobs.
    pub fn thread_of(&self, key: &str) -> usize {
        crate::core::home_core(key, self.keyed.len())
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.keyed.len()
    }

    fn queue<T, F>(
        jobs: &crossbeam_channel::Sender<Job<S>>,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = futures_channel::oneshot::channel();
        let job: Job<S> = Box::new(move |store| {
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

fn run_worker<S: ?Sized>(
    receiver: &crossbeam_channel::Receiver<Job<S>>,
    own: &crossbeam_channel::Receiver<Job<S>>,
    stopped: &crossbeam_channel::Receiver<()>,
    factory: &StoreFactory<S>,
) {
    let mut store: Option<Box<S>> = None;
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
        let current = match &mut store {
            Some(current) => current,
            None => match factory() {
                Ok(opened) => store.insert(opened),
                Err(error) => {
                    log::warn!("storage: cannot open the database: {error}");
                    job(Err(error));
                    continue;
                }
            },
        };
        // A panic in one job (a driver's bug, a tampered row) fails that job only; the
        // thread and its connection (reopened) go on serving the others.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(current.as_mut()))));
        if outcome.unwrap_or(true) {
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

    impl AuthStore for Fixed {
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
        let factory: Arc<StoreFactory<dyn AuthStore>> = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Fixed) as Box<dyn AuthStore>)
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
        let factory: Arc<StoreFactory<dyn AuthStore>> = Arc::new(move || {
            if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StoreError::Unavailable("refused".into()))
            } else {
                Ok(Box::new(Fixed) as Box<dyn AuthStore>)
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
