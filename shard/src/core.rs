//! One core's world: its session table shard, its per-core buffers, its channels to
//! the other cores, and the tasks that serve them.
//!
//! ```text
//!   connection tasks --route()--> outbox[peer] --forwarder task--> mesh channel --> peer core
//!          ^                                                                         |
//!          +---- mailbox <-- deliver() <-- receiver task <-- mesh channel <-- other cores
//! ```
//! Nothing here is shared with another core: state is `Rc`/`RefCell`, and cores talk
//! through glommio's shared channels only.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use glommio::channels::channel_mesh::{Receivers, Senders};
use starling_wire::c2s::C2s;
use starling_wire::c2s::Entropy;
use starling_wire::framer::Framer;
use starling_wire::jid::BareJid;

use crate::limits::{Limits, BATCH_BYTES_MAX, OUTBOX_BYTES_MAX, READ_BUFFER_BYTES, STANZAS_PER_BATCH_MAX};
use crate::mailbox::Mailbox;
use crate::sessions::SessionTable;
use crate::settings::Settings;

/// A connection moving to its home core after resource binding (DESIGN.md section 2):
/// the socket, its TLS state and every buffered byte travel in one message.
pub(crate) struct Transfer {
    pub fd: OwnedFd,
    pub framer: Framer,
    pub c2s: C2s,
    pub moving: crate::io::Moving,
    pub listener: usize,
    pub user: BareJid,
    pub request: crate::connection::Request,
}

/// A connection moving to another core: a c2s connection to its home core, or an
/// HTTP connection to the core of its request's BOSH session (`web.rs`).
pub(crate) enum Adoption {
    C2s(Box<Transfer>),
    Http(Box<crate::web::HttpTransfer>),
}

/// Stamped stanzas in one buffer: one allocation (and one cross-core free) per batch,
/// not per stanza.
#[derive(Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Batch {
    pub(crate) fn push(&mut self, stanza: &[u8]) {
        self.bytes.extend_from_slice(stanza);
        // Invariant: a batch is cut well before 4 GiB (see `BATCH_BYTES_MAX`).
        self.ends.push(u32::try_from(self.bytes.len()).expect("batch under 4 GiB"));
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn stanzas(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let stanza = &self.bytes[start..end as usize];
            start = end as usize;
            stanza
        })
    }
}

/// What cores send each other.
pub(crate) enum CoreMessage {
    /// Stamped stanzas for accounts homed on the receiving core.
    Stanzas(Batch),
    /// Replicated changes for entries homed on the receiving core (or for all cores).
    Replica(Vec<crate::cluster::ReplicaOp>),
    /// Stanzas from other nodes for one session each (recipient full JID).
    Routes(Vec<(Box<str>, Vec<u8>)>),
    /// Stanzas another node handed to this node to deliver (the account's sessions
    /// are here), and module events for accounts homed on the receiving core.
    Forwarded(Vec<crate::cluster::Inbound>),
    /// A connection to adopt.
    Adopt(Adoption),
}

/// Counters of one core (read by the admin port and metrics).
#[derive(Default)]
pub(crate) struct Stats {
    pub connections: Cell<usize>,
    pub connections_accepted: Cell<u64>,
    pub logins: Cell<u64>,
    pub login_failures: Cell<u64>,
    pub stanzas_routed: Cell<u64>,
    pub stanzas_delivered: Cell<u64>,
    pub moved_in: Cell<u64>,
    /// Panics contained (`contain.rs`): each ended one stream or task.
    pub panics: Cell<u64>,
    /// Counters the modules keep (`Core::count`), by name.
    pub counters: RefCell<std::collections::BTreeMap<&'static str, u64>>,
}

/// Stanzas waiting to go to one peer core, in order.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Full batches waiting, then the one being filled.
    queue: RefCell<Vec<Batch>>,
    /// Stanza bytes queued or in the channel to the peer core, not yet received.
    bytes: Cell<usize>,
    /// Congested above [`OUTBOX_BYTES_MAX`]: senders wait (`flow.rs`).
    valve: Rc<crate::flow::Valve>,
    replica: RefCell<Vec<crate::cluster::ReplicaOp>>,
    routes: RefCell<Vec<(Box<str>, Vec<u8>)>>,
    forwarded: RefCell<Vec<crate::cluster::Inbound>>,
    waker: Cell<Option<Waker>>,
    adoptions: RefCell<Vec<Adoption>>,
}

/// Randomness for stream ids, nonces and resources: the OS generator.
pub(crate) struct SystemEntropy(ring::rand::SystemRandom);

impl Entropy for SystemEntropy {
    fn fill(&mut self, bytes: &mut [u8]) {
        use ring::rand::SecureRandom;
        // Invariant: the OS generator does not fail once the process is running.
        self.0.fill(bytes).expect("system randomness");
    }
}

/// The node-wide things every core shares read-only.
pub(crate) struct Shared {
    pub settings: Settings,
    /// Connection counts and authentication failures per source address.
    pub guard: Arc<crate::guard::AddressGuard>,
    /// Credentials and account creation (the rest of storage is the modules').
    pub accounts: Arc<dyn crate::db::Accounts>,
}

impl Shared {
    pub fn new(settings: Settings, accounts: Arc<dyn crate::db::Accounts>) -> Shared {
        let limits = &settings.limits;
        let guard = Arc::new(crate::guard::AddressGuard::new(limits.connections_per_address_max, limits.fail2ban));
        Shared { settings, guard, accounts }
    }
}

pub struct Core {
    me: std::rc::Weak<Core>,
    pub(crate) id: usize,
    pub(crate) count: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sessions: RefCell<SessionTable>,
    pub(crate) read_buffer: RefCell<Vec<u8>>,
    /// Where a client's stanza is stamped before it is routed (reused, never shrunk).
    pub(crate) stamp_buffer: RefCell<Vec<u8>>,
    pub(crate) plain_buffer: RefCell<Vec<u8>>,
    pub(crate) entropy: RefCell<SystemEntropy>,
    pub(crate) stats: Stats,
    pub(crate) outboxes: Vec<Outbox>,
    /// Every open connection, for shutdown.
    pub(crate) live: RefCell<HashMap<u64, Rc<Mailbox>>>,
    next_id: Cell<u64>,
    pub(crate) stopping: Cell<bool>,
    /// Clustering state, when this node is part of a cluster.
    pub(crate) cluster: Option<crate::cluster::Cluster>,
    /// When this core started.
    pub(crate) started: std::time::Instant,
    /// Queues that went over their mark while the current stanza was handled
    /// (`flow.rs`): whoever handled it waits for them.
    congestion: RefCell<Vec<Rc<dyn crate::flow::Congestion>>>,
    /// The features, in hook order (`module.rs`), set once the core runs.
    pub(crate) modules: std::cell::OnceCell<crate::module::Modules>,
    /// (namespace, element) -> the modules answering it, with their scopes.
    pub(crate) iq_routes: std::cell::OnceCell<crate::router::IqRoutes>,
    /// Some module has an `on_push` hook.
    pub(crate) push_hooks: Cell<bool>,
    /// IQs to other accounts being answered from storage (`router.rs`).
    pub(crate) on_behalf_in_flight: Cell<usize>,
    /// Stanzas waiting for an account with no session on this node to be looked up
    /// and loaded, in arrival order (`router.rs`).
    pub(crate) waiting_accounts: RefCell<HashMap<Box<str>, Vec<Vec<u8>>>>,
    /// The stanza shaper's state of each account homed here that sent since it
    /// bound (removed with its last session).
    pub(crate) account_shapers: RefCell<HashMap<Box<str>, std::time::Instant>>,
    /// Refused or failed accepts: one log line per interval.
    pub(crate) accept_log: crate::guard::LogEvery,
    /// Resumable sessions homed here, by resumption id (`resume.rs`).
    pub(crate) resumable: RefCell<HashMap<Box<str>, Rc<crate::resume::Resumable>>>,
    /// Resumptions waiting for other nodes' answers, by token (`resume.rs`).
    pub(crate) handovers: RefCell<HashMap<u64, crate::resume::Pending>>,
    /// Stanzas of sessions handed to other nodes, until they confirm (`resume.rs`).
    pub(crate) handed_out: RefCell<HashMap<u64, Vec<Vec<u8>>>>,
    /// BOSH sessions created on this core, by `sid` (`bosh.rs`).
    pub(crate) bosh: RefCell<HashMap<Box<str>, Rc<crate::bosh::BoshSession>>>,
}

impl Core {
    pub(crate) fn new(id: usize, count: usize, shared: Arc<Shared>) -> Rc<Core> {
        let shared_cluster = shared.settings.cluster.clone().map(crate::cluster::Cluster::new);
        Rc::new_cyclic(|me| Core {
            me: me.clone(),
            id,
            count,
            shared,
            sessions: RefCell::new(SessionTable::default()),
            read_buffer: RefCell::new(vec![0; READ_BUFFER_BYTES]),
            stamp_buffer: RefCell::new(Vec::with_capacity(4096)),
            plain_buffer: RefCell::new(Vec::with_capacity(READ_BUFFER_BYTES)),
            entropy: RefCell::new(SystemEntropy(ring::rand::SystemRandom::new())),
            stats: Stats::default(),
            outboxes: (0..count).map(|_| Outbox::default()).collect(),
            live: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            stopping: Cell::new(false),
            cluster: shared_cluster,
            started: std::time::Instant::now(),
            congestion: RefCell::new(Vec::new()),
            modules: std::cell::OnceCell::new(),
            iq_routes: std::cell::OnceCell::new(),
            push_hooks: Cell::new(false),
            on_behalf_in_flight: Cell::new(0),
            waiting_accounts: RefCell::new(HashMap::new()),
            account_shapers: RefCell::new(HashMap::new()),
            accept_log: crate::guard::LogEvery::new(std::time::Duration::from_secs(10)),
            resumable: RefCell::new(HashMap::new()),
            handovers: RefCell::new(HashMap::new()),
            handed_out: RefCell::new(HashMap::new()),
            bosh: RefCell::new(HashMap::new()),
        })
    }

    /// Builds this core's modules with `factory` (once, on this core).
    pub(crate) fn install_modules(self: &Rc<Self>, factory: &crate::module::ModuleFactory) {
        let modules = factory(self);
        self.push_hooks.set(modules.iter().any(|m| m.wants_push()));
        let _ = self.iq_routes.set(crate::router::IqRoutes::new(&modules));
        let _ = self.modules.set(modules);
    }

    /// The modules in hook order (none before `install_modules`).
    pub(crate) fn module_list(&self) -> &[Rc<dyn crate::module::Module>] {
        self.modules.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// A counted handle to this core, for tasks that outlive the caller's borrow.
    pub fn rc(&self) -> Rc<Core> {
        // Invariant: a Core only exists inside the Rc built by `new`.
        self.me.upgrade().expect("core alive")
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.settings.limits
    }

    /// A number unique on this node: the core in the low bits.
    pub fn next_id(&self) -> u64 {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        (n << 8) | self.id as u64
    }

    /// The core that owns `bare` (normalised text): every resource of an account
    /// lives there.
    pub(crate) fn home_of(&self, bare: &str) -> usize {
        home_core(bare, self.count)
    }

    /// Queues a copy of `stanza` for the peer core `peer` (never this core).
    pub(crate) fn send_to_core(&self, peer: usize, stanza: &[u8]) {
        debug_assert_ne!(peer, self.id);
        let outbox = &self.outboxes[peer];
        let mut queue = outbox.queue.borrow_mut();
        let full = queue
            .last()
            .is_none_or(|batch| batch.len() >= STANZAS_PER_BATCH_MAX || batch.bytes.len() >= BATCH_BYTES_MAX);
        if full {
            queue.push(Batch::default());
        }
        // Invariant: a batch was pushed just above if there was none.
        queue.last_mut().expect("a batch").push(stanza);
        drop(queue);
        outbox.bytes.set(outbox.bytes.get() + stanza.len());
        if outbox.bytes.get() > OUTBOX_BYTES_MAX {
            outbox.valve.set(true);
            self.note_congestion(outbox.valve.clone());
        }
        if let Some(waker) = outbox.waker.take() {
            waker.wake();
        }
    }

    pub(crate) fn send_replica_to_core(&self, peer: usize, op: crate::cluster::ReplicaOp) {
        let outbox = &self.outboxes[peer];
        outbox.replica.borrow_mut().push(op);
        if let Some(waker) = outbox.waker.take() {
            waker.wake();
        }
    }

    pub(crate) fn send_route_to_core(&self, peer: usize, recipient: &str, stanza: &[u8]) {
        let outbox = &self.outboxes[peer];
        outbox.routes.borrow_mut().push((recipient.into(), stanza.to_vec()));
        outbox.bytes.set(outbox.bytes.get() + stanza.len());
        if outbox.bytes.get() > OUTBOX_BYTES_MAX {
            outbox.valve.set(true);
            self.note_congestion(outbox.valve.clone());
        }
        if let Some(waker) = outbox.waker.take() {
            waker.wake();
        }
    }

    pub(crate) fn forward_to_core(&self, peer: usize, inbound: crate::cluster::Inbound) {
        let outbox = &self.outboxes[peer];
        outbox.forwarded.borrow_mut().push(inbound);
        if let Some(waker) = outbox.waker.take() {
            waker.wake();
        }
    }

    pub(crate) fn adopt_on(&self, peer: usize, transfer: Adoption) {
        let outbox = &self.outboxes[peer];
        outbox.adoptions.borrow_mut().push(transfer);
        if let Some(waker) = outbox.waker.take() {
            waker.wake();
        }
    }

    /// Notes that `queue` went over its mark while handling the current stanza: the
    /// session (or task) that handled it waits for the queue before reading more.
    pub fn note_congestion(&self, queue: Rc<dyn crate::flow::Congestion>) {
        let mut congestion = self.congestion.borrow_mut();
        if !congestion.iter().any(|c| std::ptr::addr_eq(Rc::as_ptr(c), Rc::as_ptr(&queue))) {
            congestion.push(queue);
        }
    }

    /// Whether handling the current stanza congested a queue.
    pub(crate) fn is_congested(&self) -> bool {
        !self.congestion.borrow().is_empty()
    }

    /// The queues noted since the last call (the caller waits for them).
    pub(crate) fn take_congestion(&self) -> Vec<Rc<dyn crate::flow::Congestion>> {
        std::mem::take(&mut *self.congestion.borrow_mut())
    }

    /// Pushes `bytes` (one whole stanza) to a connection's mailbox on this core;
    /// notes congestion. `reroute`: see `Mailbox::push`. False if the session ended.
    pub(crate) fn push(&self, mailbox: &Rc<Mailbox>, bytes: &[u8], reroute: bool) -> bool {
        match mailbox.push(bytes, self.limits().queued_bytes_per_connection_max, reroute) {
            crate::mailbox::Pushed::Queued => true,
            crate::mailbox::Pushed::Congested => {
                self.note_congestion(mailbox.clone());
                true
            }
            crate::mailbox::Pushed::Closed => false,
        }
    }

    /// Counts an open connection (for shutdown and metrics) until
    /// [`Core::unregister_live`].
    pub(crate) fn register_live(&self, id: u64, mailbox: Rc<Mailbox>) {
        self.live.borrow_mut().insert(id, mailbox);
        self.stats.connections.set(self.stats.connections.get() + 1);
    }

    /// Like [`Core::register_live`], until the returned guard is dropped (also when a
    /// panic unwinds its task).
    #[must_use]
    pub(crate) fn register_live_guarded(&self, id: u64, mailbox: Rc<Mailbox>) -> Live {
        self.register_live(id, mailbox);
        Live { core: self.rc(), id }
    }

    pub(crate) fn unregister_live(&self, id: u64) {
        let Ok(mut live) = self.live.try_borrow_mut() else { return };
        if live.remove(&id).is_some() {
            self.stats.connections.set(self.stats.connections.get() - 1);
        }
    }
}

/// An open connection, counted until dropped.
pub(crate) struct Live {
    core: Rc<Core>,
    id: u64,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.core.unregister_live(self.id);
    }
}

/// FNV-1a over the normalised bare JID: stable, cheap, and the same on every core.
pub(crate) fn home_core(bare: &str, cores: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bare.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % cores as u64) as usize
}

/// Sends everything queued for `peer`, in batches, until the core stops.
pub(crate) async fn forward(core: Rc<Core>, senders: Rc<Senders<CoreMessage>>, peer: usize) {
    loop {
        // Take everything queued at once (linear, whatever the backlog), then send it in
        // batches.
        let (stanzas, adoptions, replica, routes, forwarded) = futures_lite::future::poll_fn(|cx| {
            let outbox = &core.outboxes[peer];
            let mut queue = outbox.queue.borrow_mut();
            let mut adoptions = outbox.adoptions.borrow_mut();
            let mut replica = outbox.replica.borrow_mut();
            let mut routes = outbox.routes.borrow_mut();
            let mut forwarded = outbox.forwarded.borrow_mut();
            if queue.is_empty()
                && adoptions.is_empty()
                && replica.is_empty()
                && routes.is_empty()
                && forwarded.is_empty()
            {
                outbox.waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            Poll::Ready((
                std::mem::take(&mut *queue),
                std::mem::take(&mut *adoptions),
                std::mem::take(&mut *replica),
                std::mem::take(&mut *routes),
                std::mem::take(&mut *forwarded),
            ))
        })
        .await;
        if !forwarded.is_empty() && senders.send_to(peer, CoreMessage::Forwarded(forwarded)).await.is_err() {
            return;
        }
        if !replica.is_empty() && senders.send_to(peer, CoreMessage::Replica(replica)).await.is_err() {
            return;
        }
        let outbox = &core.outboxes[peer];
        if !routes.is_empty() {
            let bytes: usize = routes.iter().map(|(_, stanza)| stanza.len()).sum();
            if senders.send_to(peer, CoreMessage::Routes(routes)).await.is_err() {
                return;
            }
            outbox.bytes.set(outbox.bytes.get().saturating_sub(bytes));
        }
        for transfer in adoptions {
            if senders.send_to(peer, CoreMessage::Adopt(transfer)).await.is_err() {
                return;
            }
        }
        for batch in stanzas {
            let bytes = batch.bytes.len();
            if senders.send_to(peer, CoreMessage::Stanzas(batch)).await.is_err() {
                return;
            }
            outbox.bytes.set(outbox.bytes.get().saturating_sub(bytes));
            if outbox.bytes.get() <= OUTBOX_BYTES_MAX {
                outbox.valve.set(false);
            }
        }
    }
}

/// Receives what the other cores send this one.
pub(crate) async fn receive(core: Rc<Core>, receivers: Receivers<CoreMessage>) {
    let mut receivers = receivers;
    let streams = receivers.streams();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(_, receiver)| {
            let core = core.clone();
            glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    match message {
                        CoreMessage::Stanzas(batch) => {
                            for stanza in batch.stanzas() {
                                let what = || crate::contain::describe(stanza);
                                let _ = crate::contain::call(&core, &what, || crate::router::deliver(&core, stanza));
                                // A recipient behind: stop taking from this core until
                                // it catches up (the sender's outbox then fills and its
                                // senders wait; `flow.rs`).
                                let congested = core.take_congestion();
                                if !congested.is_empty() {
                                    crate::flow::drained(congested).await;
                                }
                            }
                        }
                        CoreMessage::Replica(ops) => {
                            for op in ops {
                                let what = || "a replicated change".to_owned();
                                let _ = crate::contain::call(&core, &what, || crate::cluster::apply(&core, op));
                            }
                        }
                        CoreMessage::Routes(routes) => {
                            for (recipient, stanza) in routes {
                                let what = || crate::contain::describe(&stanza);
                                let deliver = || crate::router::deliver_local(&core, &recipient, &stanza);
                                let _ = crate::contain::call(&core, &what, deliver);
                                let congested = core.take_congestion();
                                if !congested.is_empty() {
                                    crate::flow::drained(congested).await;
                                }
                            }
                        }
                        CoreMessage::Forwarded(inbound) => {
                            for item in inbound {
                                let what = || "a stanza or event from another node".to_owned();
                                let _ = crate::contain::call(&core, &what, || crate::cluster::dispatch(&core, item));
                                let congested = core.take_congestion();
                                if !congested.is_empty() {
                                    crate::flow::drained(congested).await;
                                }
                            }
                        }
                        CoreMessage::Adopt(adoption) => match adoption {
                            Adoption::C2s(transfer) => crate::contain::spawn(
                                core.clone(),
                                "a connection",
                                crate::connection::adopt(core.clone(), transfer),
                            ),
                            Adoption::Http(transfer) => crate::contain::spawn(
                                core.clone(),
                                "an HTTP connection",
                                crate::web::adopt(core.clone(), transfer),
                            ),
                        },
                    }
                    glommio::yield_if_needed().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The home core is a pure function of the bare JID and spreads accounts.
    #[test]
    fn home_core_is_stable_and_spreads() {
        assert_eq!(home_core("alice@localhost", 4), home_core("alice@localhost", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[home_core(&format!("user{i}@localhost"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
