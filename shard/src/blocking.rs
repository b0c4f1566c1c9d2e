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
        let handles = (0..workers)
            .map(|i| {
                let receiver = receiver.clone();
                let stopped = stopped.clone();
                let factory = factory.clone();
                std::thread::Builder::new()
                    .name(format!("starling-db-{i}"))
                    .spawn(move || run_worker(&receiver, &stopped, &*factory))
                    // Invariant: thread creation fails only when the process is out of resources at startup.
                    .expect("spawning a DB thread")
            })
            .collect();
        (DbPool { jobs }, DbThreads { handles, stop: Some(stop) })
    }

    /// Runs `work` on a DB thread and returns its result. Fails with `Stopped` when
    /// the pool is gone or its queue is full (backpressure: the caller answers
    /// `resource-constraint`/`internal-server-error` rather than queueing forever).
    pub fn run<T, F>(&self, work: F) -> impl Future<Output = Result<T, StoreError>> + 'static
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
        let queued = self.jobs.try_send(job).is_ok();
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
