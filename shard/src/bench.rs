//! Support for the `route` benchmark: routes client stanzas from a session on core 0
//! to accounts homed on core 1 through the real path (framer, stanza handling,
//! stamping, router, outbox, core channel, delivery into mailboxes), without sockets,
//! and reports the CPU time both cores spent. Not part of the public API.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_wire::c2s::C2sSettings;
use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;

use crate::core::{home_core, Core};
use crate::db::{Accounts, AuthStore, DbPool, DbThreads, StoreError, StoreFactory};
use crate::limits::Limits;
use crate::mailbox::Mailbox;
use crate::module::ModuleFactory;
use crate::session::State;
use crate::sessions::{Session, SessionId};
use crate::settings::{Listener, ListenerTls, Settings};
use crate::Node;

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// Two cores, one sender session on core 0, `recipients` accounts homed on core 1.
pub struct RouteBench {
    node: Node,
    threads: Option<DbThreads>,
    recipients: Vec<String>,
}

/// CPU time of the current thread.
fn thread_cpu() -> Duration {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

impl RouteBench {
    /// The runtime alone: the routing path without any feature module.
    pub fn new(recipients: usize) -> RouteBench {
        let factory: Arc<StoreFactory<dyn AuthStore>> = Arc::new(|| Err(StoreError::Unavailable("benchmark".into())));
        let (db, threads): (DbPool<dyn AuthStore>, DbThreads) = DbPool::start(1, 4, factory);
        RouteBench::with_modules(recipients, Arc::new(|_| Vec::new()), Arc::new(db), threads)
    }

    /// The same path through the hooks of the modules `modules` builds (storage from
    /// `accounts`, served by `threads`, which the bench joins when dropped).
    pub fn with_modules(
        recipients: usize,
        modules: Arc<ModuleFactory>,
        accounts: Arc<dyn Accounts>,
        threads: DbThreads,
    ) -> RouteBench {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let settings = Settings {
            cpus: vec![0, 1 % cpus],
            listeners: vec![Listener {
                c2s: Arc::new(C2sSettings::for_tests()),
                tls: ListenerTls::StartTls,
                shaper: None,
                http: None,
            }],
            limits: Limits { queued_bytes_per_connection_max: usize::MAX / 2, ..Limits::for_tests() },
            ..Settings::one_core(modules)
        };
        // Invariant: two executors start on this machine (memlock allows them).
        let node = Node::start(settings, vec![Vec::new(), Vec::new()], accounts).expect("benchmark node");
        let names: Vec<String> = (0..)
            .map(|i| format!("user{i}@localhost"))
            .filter(|bare| home_core(bare, 2) == 1)
            .take(recipients)
            .collect();
        let bind = names.clone();
        node.ask(1, move |core: &Core| {
            let mut sessions = core.sessions.borrow_mut();
            for (i, bare) in bind.iter().enumerate() {
                let jid = format!("{bare}/bench").parse().expect("valid JID");
                let mailbox = Rc::new(Mailbox::default());
                sessions.bind(Session {
                    id: SessionId(i as u64),
                    jid,
                    mailbox,
                    available: true,
                    priority: 0,
                    created_ms: 0,
                    flags: Default::default(),
                });
            }
        });
        RouteBench { node, threads: Some(threads), recipients: names }
    }

    /// The client bytes of `count` chat messages to the recipients, round robin.
    pub fn client_bytes(&self, count: usize) -> Vec<u8> {
        let mut bytes = HEADER.as_bytes().to_vec();
        for i in 0..count {
            let to = &self.recipients[i % self.recipients.len()];
            bytes.extend_from_slice(
                format!("<message to='{to}' type='chat' id='m{i}'><body>Hello, this is a chat message of ordinary size.</body></message>").as_bytes(),
            );
        }
        bytes
    }

    /// One criterion measurement (`iter_custom`): `iterations` messages sent and
    /// delivered, and the CPU both cores spent on them.
    pub fn measure(&self, iterations: u64) -> Duration {
        let count = iterations as usize;
        self.run(self.client_bytes(count), count)
    }

    /// Routes the stanzas in `bytes` (from [`RouteBench::client_bytes`]) and waits until
    /// core 1 delivered them all. Returns the CPU time cores 0 and 1 spent.
    pub fn run(&self, bytes: Vec<u8>, count: usize) -> Duration {
        let before_delivered = self.node.ask(1, |core: &Core| core.stats.stanzas_delivered.get()).unwrap_or(0);
        let start: Vec<Duration> = (0..2).filter_map(|i| self.node.ask(i, |_: &Core| thread_cpu())).collect();
        self.node.ask(0, move |core: &Core| {
            let mut framer = Framer::new(FramerLimits::DEFAULT);
            let jid = "sender@localhost/bench".parse().expect("valid JID");
            let mut state = State::new(jid, SessionId(0), u16::MAX, None);
            for chunk in bytes.chunks(16 * 1024) {
                let mut input = chunk;
                while let Ok(Some(frame)) = framer.next(&mut input) {
                    if let Frame::Element(element) = frame {
                        let _ = crate::session::handle_element(core, &mut state, element);
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let delivered = self.node.ask(1, |core: &Core| core.stats.stanzas_delivered.get()).unwrap_or(0);
            if delivered - before_delivered >= count as u64 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Empty the mailboxes so memory stays flat across runs.
        let recipients = self.recipients.clone();
        self.node.ask(1, move |core: &Core| {
            let sessions = core.sessions.borrow();
            let mut sink = Vec::new();
            for bare in &recipients {
                for session in sessions.sessions(bare) {
                    session.mailbox.drain_into(&mut sink, usize::MAX, usize::MAX);
                    sink.clear();
                }
            }
        });
        let end: Vec<Duration> = (0..2).filter_map(|i| self.node.ask(i, |_: &Core| thread_cpu())).collect();
        end.iter().zip(&start).map(|(e, s)| e.saturating_sub(*s)).sum()
    }
}

impl Drop for RouteBench {
    fn drop(&mut self) {
        self.node.shutdown();
        if let Some(threads) = self.threads.take() {
            threads.join();
        }
    }
}
