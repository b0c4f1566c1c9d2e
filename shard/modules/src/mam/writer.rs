//! The archive's batched writer (MongooseIM's asynchronous archive writer): rows are
//! written many per transaction, every `flush_interval` or `batch_size` rows, one
//! batch at a time per core; none is ever dropped.
//!
//! ```text
//!  append --> pending (in order) --batch_size or flush_interval--> one DB transaction
//!               |                                                   ok: committed += n
//!               |                                                   error: rows back in
//!               |                                                   front, retried
//!               +-- pending + in flight > queue_max: the valve closes, and the session
//!                   whose message was archived stops reading until it opens (flow.rs)
//!  sync() --> resolves once every row appended before it is committed (a query
//!             finds every message delivered before it)
//! ```
//! The archive quota (`max_user_archived_messages`): the writer knows how many rows
//! each owner it wrote for has (its first batch counts them, in the same DB job);
//! when an owner passes the quota by a tenth, the job after its batch deletes its
//! oldest rows down to the quota. So an archive holds at most 1.1 x the quota, and
//! the counting costs one `COUNT(*)` per owner per process and one purge per tenth.
//! The counts are per core (an owner's rows are written on its home core); past
//! `COUNTS_MAX` owners they are forgotten and counted again.
//! Cost per archived message on the core: one row moved into a vector; the DB thread
//! pays one prepared insert per row and one commit per batch.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use starling_shard::db::DbPool;
use starling_shard::flow::{Congestion, Valve};
use starling_shard::Core;
use starling_wire::jid::BareJid;

use crate::store::{ArchiveTrim, ArchivedMessage, Store};
use crate::MamConfig;

/// How long a failed batch waits before it is tried again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Owners whose archive size one core remembers (about 64 bytes each).
const COUNTS_MAX: usize = 100_000;

/// The batched writer of one core.
pub struct Writer {
    db: DbPool<dyn Store>,
    config: MamConfig,
    pending: RefCell<Vec<(BareJid, ArchivedMessage)>>,
    /// Rows handed to a DB thread, not yet committed (one batch at a time).
    in_flight: Cell<usize>,
    /// Rows appended so far, and rows committed so far (in order).
    appended: Cell<u64>,
    committed: Cell<u64>,
    /// A flush is scheduled.
    armed: Cell<bool>,
    /// After a failure, no batch before this instant.
    backoff_until: Cell<Option<std::time::Instant>>,
    valve: Rc<Valve>,
    /// `sync` callers: (row number they wait for, waker).
    waiters: RefCell<Vec<(u64, Waker)>>,
    /// Batches that failed (each retried until it is written).
    pub(crate) failures: Cell<u64>,
    /// Rows in each owner's archive, as far as this core knows (for the quota).
    counts: RefCell<HashMap<BareJid, u64>>,
}

impl Writer {
    pub fn new(db: DbPool<dyn Store>, config: MamConfig) -> Writer {
        Writer {
            db,
            config,
            pending: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            appended: Cell::new(0),
            committed: Cell::new(0),
            armed: Cell::new(false),
            backoff_until: Cell::new(None),
            valve: Rc::new(Valve::default()),
            waiters: RefCell::new(Vec::new()),
            failures: Cell::new(0),
            counts: RefCell::new(HashMap::new()),
        }
    }

    /// Queues a row for `owner`'s archive. Past `queue_max` rows waiting, the core
    /// notes the congestion: whoever sent the message waits until rows are written.
    pub fn append(self: &Rc<Self>, core: &Core, owner: BareJid, message: ArchivedMessage) {
        let waiting = {
            let mut pending = self.pending.borrow_mut();
            pending.push((owner, message));
            pending.len()
        };
        self.appended.set(self.appended.get() + 1);
        if waiting + self.in_flight.get() > self.config.queue_max {
            self.valve.set(true);
            core.note_congestion(self.valve.clone());
        }
        if waiting >= self.config.batch_size {
            self.flush(core);
        } else {
            self.arm(core, self.config.flush_interval);
        }
    }

    /// Resolves once every row appended before this call is committed.
    pub fn sync(self: &Rc<Self>) -> impl std::future::Future<Output = ()> + 'static {
        let target = self.appended.get();
        let writer = self.clone();
        futures_lite::future::poll_fn(move |cx| {
            if writer.committed.get() >= target {
                return Poll::Ready(());
            }
            writer.waiters.borrow_mut().push((target, cx.waker().clone()));
            Poll::Pending
        })
    }

    /// Schedules a flush after `delay`, unless one is scheduled already.
    fn arm(self: &Rc<Self>, core: &Core, delay: Duration) {
        if self.armed.replace(true) {
            return;
        }
        let writer = self.clone();
        let task_core = core.handle();
        core.spawn("the archive writer's timer", async move {
            glommio::timer::sleep(delay).await;
            writer.armed.set(false);
            writer.flush(&task_core);
        });
    }

    /// Writes the oldest `batch_size` pending rows in one transaction, unless a batch
    /// is being written (its completion starts the next).
    fn flush(self: &Rc<Self>, core: &Core) {
        if self.in_flight.get() > 0 {
            return;
        }
        if self.backoff_until.get().is_some_and(|until| std::time::Instant::now() < until) {
            return;
        }
        let batch: Vec<(BareJid, ArchivedMessage)> = {
            let mut pending = self.pending.borrow_mut();
            let n = pending.len().min(self.config.batch_size);
            pending.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let rows = batch.len();
        self.in_flight.set(rows);
        let trims = self.owners_to_trim(&batch);
        let keep = self.config.max_user_archived_messages;
        // The writer keeps the batch until it is committed: a failed write, or one the
        // pool could not even queue, is put back and retried, never lost.
        let batch = std::sync::Arc::new(batch);
        let job = batch.clone();
        let write = self.db.run(move |store| {
            store.archive_put_many(&job)?;
            // The rows are in; a purge that fails is tried again with a later batch.
            let trimmed: Vec<_> = trims
                .into_iter()
                .filter_map(|owner| store.archive_trim(&owner, keep).ok().map(|trim| (owner, trim)))
                .collect();
            Ok(trimmed)
        });
        let writer = self.clone();
        let task_core = core.handle();
        core.spawn("the archive writer", async move {
            let outcome = write.await;
            writer.in_flight.set(0);
            match outcome {
                Ok(trimmed) => {
                    task_core.count("mam_rows_written", rows as u64);
                    writer.counted(&task_core, &batch, trimmed);
                    writer.committed(rows);
                    writer.flush(&task_core);
                }
                Err(error) => {
                    let batch = std::sync::Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
                    writer.failed(&task_core, &error.to_string(), batch);
                }
            }
        });
    }

    /// Owners of `batch` whose archives must be counted (unknown here) or purged
    /// (known to be a tenth over the quota once the batch is in).
    fn owners_to_trim(&self, batch: &[(BareJid, ArchivedMessage)]) -> Vec<BareJid> {
        let quota = self.config.max_user_archived_messages;
        if quota == 0 {
            return Vec::new();
        }
        let mut adding: HashMap<&BareJid, u64> = HashMap::new();
        for (owner, _) in batch {
            *adding.entry(owner).or_insert(0) += 1;
        }
        let counts = self.counts.borrow();
        let slack = (quota / 10).max(1);
        adding
            .into_iter()
            .filter(|(owner, added)| counts.get(*owner).is_none_or(|count| count + added > quota + slack))
            .map(|(owner, _)| owner.clone())
            .collect()
    }

    /// Updates the archive sizes after a committed batch and its purges.
    fn counted(&self, core: &Core, batch: &[(BareJid, ArchivedMessage)], trimmed: Vec<(BareJid, ArchiveTrim)>) {
        if self.config.max_user_archived_messages == 0 {
            return;
        }
        let mut counts = self.counts.borrow_mut();
        if counts.len() > COUNTS_MAX {
            counts.clear();
        }
        for (owner, _) in batch {
            if let Some(count) = counts.get_mut(owner) {
                *count += 1;
            }
        }
        let mut deleted = 0;
        for (owner, trim) in trimmed {
            // Counted after this batch was written: the exact size now.
            counts.insert(owner, trim.remaining);
            deleted += trim.deleted;
        }
        if deleted > 0 {
            core.count("mam_rows_purged", deleted);
        }
    }

    fn committed(&self, rows: usize) {
        self.committed.set(self.committed.get() + rows as u64);
        let committed = self.committed.get();
        let ready: Vec<Waker> = {
            let mut waiters = self.waiters.borrow_mut();
            let (ready, waiting): (Vec<_>, Vec<_>) = waiters.drain(..).partition(|(target, _)| *target <= committed);
            *waiters = waiting;
            ready.into_iter().map(|(_, waker)| waker).collect()
        };
        for waker in ready {
            waker.wake();
        }
        if self.pending.borrow().len() <= self.config.queue_max / 2 && self.valve.is_congested() {
            self.valve.set(false);
        }
    }

    fn failed(self: &Rc<Self>, core: &Core, error: &str, batch: Vec<(BareJid, ArchivedMessage)>) {
        self.failures.set(self.failures.get() + 1);
        core.count("mam_write_retries", 1);
        log::warn!("archive: writing {} rows failed ({error}); retrying", batch.len());
        {
            let mut pending = self.pending.borrow_mut();
            let rest = std::mem::take(&mut *pending);
            *pending = batch;
            pending.extend(rest);
        }
        // Retry later, not in a loop: the database is down or overloaded.
        self.backoff_until.set(Some(std::time::Instant::now() + RETRY_DELAY));
        let writer = self.clone();
        let task_core = core.handle();
        core.spawn("the archive writer's retry", async move {
            glommio::timer::sleep(RETRY_DELAY).await;
            writer.backoff_until.set(None);
            writer.flush(&task_core);
        });
    }
}
