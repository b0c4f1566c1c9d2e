//! Starting and stopping the cores of one node, and asking them questions.
//!
//! ```text
//!  Node::start --spawns--> executor 0 .. N-1 (pinned), each:
//!      join the core mesh -> accept loops (one per listener) -> forwarders + receiver
//!      -> control task (queries from the admin thread, stop)
//! ```
//! Other threads (admin HTTP, signal handler, tests) reach a core through its control
//! channel; the answer comes back on a std channel.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use starling_wire::error::StreamErrorCondition;
use starling_wire::jid::BareJid;

use crate::core::{Core, CoreMessage, Shared};
use crate::limits::{CORE_CHANNEL_BATCHES, SHUTDOWN_GRACE};
use crate::settings::{ListenerSockets, Settings};

type Job = Box<dyn FnOnce(&Core) + Send>;

/// The abuse-resistance counters (`guard.rs`), as `starling_<name>_total`.
const GUARD_COUNTERS: [&str; 4] =
    ["c2s_connections_refused", "c2s_auth_bans", "c2s_stanzas_shaped", "cluster_handshakes_evicted"];

enum Control {
    Run(Job),
    Discovered(Vec<starling_replicate::membership::DiscoveredNode>),
    Stop,
}

/// A running node: its cores and the way to talk to them.
pub struct Node {
    controls: Vec<UnboundedSender<Control>>,
    /// One watchdog thread per core: it joins the core's executor and stops the
    /// process if the core dies while the node is not shutting down.
    watchdogs: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// Exit status of a process whose core died (EX_SOFTWARE): a supervisor restarts it,
/// and its peers drop its sessions.
pub const CORE_DIED_EXIT_CODE: i32 = 70;

/// How one core answered a health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreHealth {
    pub core: usize,
    /// How long the core took to answer; `None`: no answer within the deadline.
    pub answered_in: Option<Duration>,
}

/// Per-core counters, summed by [`Node::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub connections: usize,
    pub sessions: usize,
    pub connections_accepted: u64,
    pub logins: u64,
    pub login_failures: u64,
    pub stanzas_routed: u64,
    pub stanzas_delivered: u64,
    pub moved_in: u64,
    /// Panics contained: each ended one stream or task, never a core.
    pub panics: u64,
    /// The modules' counters (`Core::count`), summed over the cores.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start an executor: {0}")]
    Executor(String),
    #[error("need one set of listener sockets per core ({cores} cores, {sockets} sets)")]
    Sockets { cores: usize, sockets: usize },
}

impl Node {
    /// Starts one pinned executor per entry of `settings.cpus`. `replication` holds one
    /// listening socket per core for other nodes' links (with clustering on).
    /// `accounts` answers credential lookups (usually the server's [`crate::db::DbPool`]).
    pub fn start(
        settings: Settings,
        sockets: ListenerSockets,
        accounts: Arc<dyn crate::db::Accounts>,
    ) -> Result<Node, StartError> {
        Node::start_clustered(settings, sockets, Vec::new(), accounts)
    }

    pub fn start_clustered(
        settings: Settings,
        sockets: ListenerSockets,
        replication: Vec<OwnedFd>,
        accounts: Arc<dyn crate::db::Accounts>,
    ) -> Result<Node, StartError> {
        let cores = settings.cpus.len();
        if sockets.len() != cores {
            return Err(StartError::Sockets { cores, sockets: sockets.len() });
        }
        let cpus = settings.cpus.clone();
        let shared = Arc::new(Shared::new(settings, accounts));
        let mesh = MeshBuilder::<CoreMessage, _>::full(cores, CORE_CHANNEL_BATCHES);
        let mut controls = Vec::with_capacity(cores);
        let mut watchdogs = Vec::with_capacity(cores);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut replication = replication.into_iter();
        for (index, (cpu, core_sockets)) in cpus.into_iter().zip(sockets).enumerate() {
            let replication_socket = replication.next();
            let (sender, receiver) = unbounded();
            controls.push(sender);
            let shared = shared.clone();
            let mesh = mesh.clone();
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("starling-core-{index}"))
                // We use no DMA files; the default 10 MiB would exceed an 8 MiB memlock.
                .io_memory(64 * 1024)
                .spawn(move || run_core(shared, mesh, cores, core_sockets, replication_socket, receiver))
                .map_err(|e| StartError::Executor(e.to_string()))?;
            watchdogs.push(watch(index, handle, stopping.clone()));
        }
        Ok(Node { controls, watchdogs: std::sync::Mutex::new(watchdogs), stopping })
    }

    /// Asks every core to answer within `deadline`; a core that does not is stuck
    /// (a dead core stops the process, so it never shows here).
    pub fn health(&self, deadline: Duration) -> Vec<CoreHealth> {
        let asked: Vec<_> = (0..self.cores())
            .map(|core| {
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                let started = Instant::now();
                let job: Job = Box::new(move |_| {
                    let _ = reply.send(());
                });
                let sent = self.controls[core].unbounded_send(Control::Run(job)).is_ok();
                (core, started, sent.then_some(answer))
            })
            .collect();
        let until = Instant::now() + deadline;
        asked
            .into_iter()
            .map(|(core, started, answer)| {
                let answered =
                    answer.and_then(|answer| answer.recv_timeout(until.saturating_duration_since(Instant::now())).ok());
                CoreHealth { core, answered_in: answered.map(|()| started.elapsed()) }
            })
            .collect()
    }

    pub fn cores(&self) -> usize {
        self.controls.len()
    }

    /// Runs `question` on core `index` and returns its answer (`None` if the core is
    /// gone or does not answer within 5 s).
    pub(crate) fn ask<T: Send + 'static>(
        &self,
        index: usize,
        question: impl FnOnce(&Core) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |core| {
            let _ = reply.send(question(core));
        });
        self.controls.get(index)?.unbounded_send(Control::Run(job)).ok()?;
        answer.recv_timeout(Duration::from_secs(5)).ok()
    }

    fn ask_all<T: Send + 'static>(&self, question: impl Fn(&Core) -> T + Send + Sync + 'static) -> Vec<T> {
        let question = Arc::new(question);
        (0..self.cores())
            .filter_map(|index| {
                let question = question.clone();
                self.ask(index, move |core| question(core))
            })
            .collect()
    }

    /// Summed counters of every core.
    pub fn stats(&self) -> NodeStats {
        let mut total = NodeStats::default();
        for core in self.ask_all(|core| {
            let s = &core.stats;
            NodeStats {
                connections: s.connections.get(),
                sessions: core.sessions.borrow().len(),
                connections_accepted: s.connections_accepted.get(),
                logins: s.logins.get(),
                login_failures: s.login_failures.get(),
                stanzas_routed: s.stanzas_routed.get(),
                stanzas_delivered: s.stanzas_delivered.get(),
                moved_in: s.moved_in.get(),
                panics: s.panics.get(),
                counters: s.counters.borrow().iter().map(|(name, n)| (name.to_string(), *n)).collect(),
            }
        }) {
            total.connections += core.connections;
            total.sessions += core.sessions;
            total.connections_accepted += core.connections_accepted;
            total.logins += core.logins;
            total.login_failures += core.login_failures;
            total.stanzas_routed += core.stanzas_routed;
            total.stanzas_delivered += core.stanzas_delivered;
            total.moved_in += core.moved_in;
            total.panics += core.panics;
            for (name, n) in core.counters {
                *total.counters.entry(name).or_insert(0) += n;
            }
        }
        total
    }

    /// Every bound full JID on this node.
    pub fn sessions(&self) -> Vec<String> {
        let mut all: Vec<String> =
            self.ask_all(|core| core.sessions.borrow().jids().map(|j| j.to_string()).collect::<Vec<_>>()).concat();
        all.sort();
        all
    }

    /// Closes every session of `user` with `condition`; returns how many were closed.
    pub fn kick(&self, user: &BareJid, condition: StreamErrorCondition) -> usize {
        let user = user.clone();
        self.ask_all(move |core| core.sessions.borrow().kick_account(&user, condition)).into_iter().sum()
    }

    /// Hands a discovery result to every core (they connect to new peers).
    pub fn update_discovery(&self, nodes: Vec<starling_replicate::membership::DiscoveredNode>) {
        for control in &self.controls {
            let _ = control.unbounded_send(Control::Discovered(nodes.clone()));
        }
    }

    /// The last discovery round failed: the cluster keeps its node list.
    pub fn discovery_failed(&self) {
        self.ask_all(|core| {
            if let Some(cluster) = &core.cluster {
                cluster.discovery_works.set(false);
            }
        });
    }

    /// `cets systemInfo` of this node.
    pub fn cluster_status(&self, node_name: &str) -> starling_replicate::membership::SystemInfo {
        let stats: Vec<crate::cluster::CoreClusterStats> =
            self.ask_all(crate::cluster::stats).into_iter().flatten().collect();
        let discovered = stats.first().map(|s| s.discovered.clone()).unwrap_or_default();
        let works = !stats.is_empty() && stats.iter().all(|s| s.discovery_works);
        use starling_replicate::membership::PeerLinks;
        fn peer<'a>(links: &'a mut std::collections::BTreeMap<String, PeerLinks>, name: &str) -> &'a mut PeerLinks {
            links.entry(name.to_owned()).or_insert_with(|| PeerLinks { name: name.to_owned(), ..Default::default() })
        }
        let mut links = std::collections::BTreeMap::new();
        for core in &stats {
            for name in &core.out_up {
                peer(&mut links, name).out_up += 1;
            }
            for name in &core.in_up {
                peer(&mut links, name).in_up += 1;
            }
        }
        let links: Vec<_> = links.into_values().filter(|l| l.name != node_name).collect();
        starling_replicate::membership::system_info(node_name, self.cores(), &discovered, &links, works)
    }

    /// `cets tableInfo`: (table, entries, bytes) of this node, local and replicated.
    pub fn table_info(&self) -> Vec<(starling_replicate::frame::Table, usize, usize)> {
        use starling_replicate::frame::Table;
        let local = self.ask_all(|core| core.sessions.borrow().len()).into_iter().sum::<usize>();
        let stats: Vec<crate::cluster::CoreClusterStats> =
            self.ask_all(crate::cluster::stats).into_iter().flatten().collect();
        let remote: usize = stats.iter().map(|s| s.remote_sessions).sum();
        let remote_bytes: usize = stats.iter().map(|s| s.remote_bytes).sum();
        let mut tables = vec![(Table::Session, local + remote, remote_bytes + local * 64)];
        for table in [Table::Sm, Table::Component, Table::ClusterId] {
            let count: usize =
                stats.iter().flat_map(|s| s.other_tables.iter()).filter(|(t, _)| *t == table).map(|(_, n)| n).sum();
            tables.push((table, count, count * 64));
        }
        tables
    }

    /// Replicated sessions held on this node (all cores).
    pub fn remote_sessions(&self) -> usize {
        self.ask_all(|core| core.cluster.as_ref().map(|c| c.replica.borrow().store.len()).unwrap_or(0))
            .into_iter()
            .sum()
    }

    /// Stops accepting, closes every stream with `system-shutdown`, waits for them (at
    /// most the shutdown grace), and stops the cores.
    /// Safe to call more than once; later calls find nothing left to stop.
    pub fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        for control in &self.controls {
            let _ = control.unbounded_send(Control::Stop);
        }
        let watchdogs = std::mem::take(&mut *self.watchdogs.lock().unwrap_or_else(|e| e.into_inner()));
        for watchdog in watchdogs {
            let _ = watchdog.join();
        }
    }
}

/// Joins core `index`'s executor; if it ends while the node is not stopping (a panic
/// escaped containment), stops the whole process: a node with a dead core would keep
/// accepting connections it never serves.
fn watch(
    index: usize,
    handle: ExecutorJoinHandle<()>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let watch = move || {
        let result = handle.join();
        if !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let how = match result {
                Ok(()) => "stopped".to_owned(),
                Err(error) => format!("died: {error}"),
            };
            log::error!("core {index} {how}; stopping the process (exit {CORE_DIED_EXIT_CODE}) so that a supervisor restarts it");
            std::process::exit(CORE_DIED_EXIT_CODE);
        }
    };
    // Invariant: a thread can be started while the node starts.
    std::thread::Builder::new().name(format!("starling-watch-{index}")).spawn(watch).expect("a watchdog thread")
}

async fn run_core(
    shared: Arc<Shared>,
    mesh: MeshBuilder<CoreMessage, glommio::channels::channel_mesh::Full>,
    cores: usize,
    sockets: Vec<OwnedFd>,
    replication: Option<OwnedFd>,
    controls: UnboundedReceiver<Control>,
) {
    let (senders, receivers) = match mesh.join().await {
        Ok(joined) => joined,
        Err(error) => {
            log::error!("core: cannot join the core mesh: {error}");
            return;
        }
    };
    // The mesh numbers its members; that number is this core's identity.
    let id = senders.peer_id();
    let core = Core::new(id, cores, shared);
    // Counters an operator alerts on are in /metrics from the start, at 0 (a breaker
    // found them missing until their first event).
    for name in GUARD_COUNTERS {
        core.count(name, 0);
    }
    let factory = core.shared.settings.modules.clone();
    core.install_modules(&*factory);
    let senders = Rc::new(senders);
    let mut tasks = Vec::new();
    for (listener, fd) in sockets.into_iter().enumerate() {
        // SAFETY: the server bound and listens on this socket and gave us ownership.
        let socket = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
        tasks.push(glommio::spawn_local(accept(core.clone(), socket, listener)));
    }
    if let Some(fd) = replication {
        // SAFETY: the server bound and listens on this socket and gave us ownership.
        let socket = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
        tasks.push(glommio::spawn_local(crate::cluster::accept(core.clone(), socket)));
    }
    let mut services = Vec::new();
    for peer in (0..cores).filter(|&peer| peer != id) {
        services.push(glommio::spawn_local(crate::core::forward(core.clone(), senders.clone(), peer)));
    }
    services.push(glommio::spawn_local(crate::core::receive(core.clone(), receivers)));
    serve_controls(&core, controls).await;
    core.stopping.set(true);
    for task in tasks {
        task.cancel().await;
    }
    drain(&core).await;
    // Tasks left running would keep the core (and its buffers) alive after the
    // executor stops.
    for task in services {
        task.cancel().await;
    }
}

async fn serve_controls(core: &Rc<Core>, mut controls: UnboundedReceiver<Control>) {
    while let Some(control) = controls.next().await {
        match control {
            Control::Run(job) => job(core),
            Control::Discovered(nodes) => crate::cluster::reconcile(core, nodes),
            Control::Stop => return,
        }
    }
}

/// Closes every connection with `system-shutdown` and waits for them to go.
async fn drain(core: &Core) {
    for mailbox in core.live.borrow().values() {
        mailbox.kick(StreamErrorCondition::SystemShutdown);
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while core.stats.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Tells a refused client why (`policy-violation`) and closes; 2 s at most.
async fn refuse(core: Rc<Core>, mut stream: glommio::net::TcpStream, why: crate::guard::Refusal) {
    let text = match why {
        crate::guard::Refusal::Banned => "too many failed authentications from this address; try again later",
        crate::guard::Refusal::TooManyConnections => "too many connections from this address",
    };
    let domain = core.shared.settings.hosts.first().map(String::as_str).unwrap_or("localhost");
    let bytes = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         from='{domain}' id='refused' version='1.0'><stream:error><policy-violation \
         xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{text}</text>\
         </stream:error></stream:stream>"
    );
    let write = crate::io::write_all_plain(&mut stream, bytes.as_bytes());
    let _ = futures_lite::future::or(async { write.await.ok() }, async {
        glommio::timer::sleep(Duration::from_secs(2)).await;
        None
    })
    .await;
}

/// Accepts c2s connections. Over a limit (this core's connections, the source
/// address's connections, a banned address) a connection is closed at once and
/// counted (`c2s_connections_refused`); the log gets one line per 10 s at most.
async fn accept(core: Rc<Core>, listener: TcpListener, index: usize) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                // Out of file descriptors (or memory): the connection stays in the
                // backlog until one is free. Retried without flooding the log.
                if let Some(left_out) = core.accept_log.tick(Instant::now()) {
                    log::warn!("c2s: accept failed: {error} ({left_out} similar events since the last line)");
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        core.stats.connections_accepted.set(core.stats.connections_accepted.get() + 1);
        let admitted = if core.stats.connections.get() >= core.limits().connections_per_core_max {
            Err(None)
        } else {
            match stream.peer_addr() {
                Ok(address) => {
                    core.shared.guard.admit(address.ip(), Instant::now()).map_err(|why| Some((why, address)))
                }
                Err(_) => Err(None),
            }
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                core.count("c2s_connections_refused", 1);
                if let Some(left_out) = core.accept_log.tick(Instant::now()) {
                    let why = match why {
                        None => "this core is at its connection limit".to_string(),
                        Some((why, address)) => format!("{why:?} from {}", address.ip()),
                    };
                    log::warn!("c2s: refused a connection: {why} ({left_out} similar events since the last line)");
                }
                if let (Some((why, _)), crate::settings::ListenerTls::StartTls) =
                    (why, core.shared.settings.listeners[index].tls)
                {
                    // RFC 6120 section 4.9.1.2: our stream header, then the error.
                    glommio::spawn_local(refuse(core.clone(), stream, why)).detach();
                }
                // Otherwise closed at once (dropping the stream closes it).
                continue;
            }
        };
        let serve = crate::connection::serve(core.clone(), stream, index, admitted);
        crate::contain::spawn(core.clone(), "a connection", serve);
    }
}
