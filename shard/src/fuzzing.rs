//! Support for fuzzing a whole core (not part of the public API): one in-memory core
//! with its modules, a bound session, and arbitrary client bytes handled the way a
//! session handles them (framing, every hook, IQ handler and storage reply), with no
//! socket. Used by `server/fuzz` (target `core`), which supplies a real store.
//!
//! Unlike a running node, a panic here is not contained: the fuzzer must see it.

use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;

use crate::core::{Core, Shared};
use crate::mailbox::Mailbox;
use crate::session::State;
use crate::sessions::{Session, SessionId};
use crate::settings::Settings;

/// The stream header the fuzz input is framed after.
const HEADER: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// How long one input may wait for storage replies and background work.
const SETTLE: Duration = Duration::from_secs(2);

/// How often the nudge thread wakes a harness wait (see [`Nudge`]).
const NUDGE_EVERY: Duration = Duration::from_millis(50);

/// A thread that wakes the harness's current wait every [`NUDGE_EVERY`], so that the
/// wait's timer is polled again even if the executor missed its wakeup.
///
/// Why: the first one-hour run of the `core` target sat for minutes at 0% CPU in a
/// 5 ms `glommio::timer::sleep` after an input the framer refused at once: the
/// executor was parked in `io_uring_enter` with the timer expired and nothing else
/// pending (one input in about 40,000; a second run of 150,000 and a standalone loop
/// of 200,000 sleeps did not repeat it). On a node such a timer would be late only
/// until the next socket event; the harness has no sockets. A sleep that took a nudge's time is
/// reported on stderr, so runs still show how often it happens.
struct Nudge {
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Nudge {
    fn start() -> Nudge {
        let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let slot = waker.clone();
        // Invariant: a thread can be started while the fuzz process starts.
        std::thread::Builder::new()
            .name("fuzz-nudge".into())
            .spawn(move || loop {
                std::thread::sleep(NUDGE_EVERY);
                let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(waker) = taken {
                    waker.wake();
                }
            })
            .expect("a nudge thread");
        Nudge { waker }
    }

    /// `future`, with its waker handed to the nudge thread on every poll.
    async fn wait<T>(&self, future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            future.as_mut().poll(cx)
        })
        .await
    }
}

/// One core on the current thread with sessions `fuzz@localhost/a` (the sender) and
/// `peer@localhost/b` bound.
pub struct CoreHarness {
    executor: glommio::LocalExecutor,
    core: Rc<Core>,
    mailboxes: Vec<Rc<Mailbox>>,
    nudge: Rc<Nudge>,
}

impl CoreHarness {
    /// `settings` must name one CPU; `accounts` answers credential lookups.
    pub fn new(settings: Settings, accounts: Arc<dyn crate::db::Accounts>) -> CoreHarness {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            // Invariant: a harness is made once per fuzz process, where executors start.
            .expect("an executor for the fuzz harness");
        let shared = Arc::new(Shared::new(settings, accounts));
        let (core, mailboxes) = executor.run(async move {
            let core = Core::new(0, 1, shared);
            let factory = core.shared.settings.modules.clone();
            core.install_modules(&*factory);
            let mut mailboxes = Vec::new();
            for (i, jid) in ["fuzz@localhost/a", "peer@localhost/b"].into_iter().enumerate() {
                let mailbox = Rc::new(Mailbox::default());
                core.sessions.borrow_mut().bind(Session {
                    id: SessionId(i as u64 + 1),
                    // Invariant: constant, valid JIDs.
                    jid: jid.parse().expect("a valid JID"),
                    mailbox: mailbox.clone(),
                    available: true,
                    priority: 0,
                    created_ms: 0,
                    flags: Default::default(),
                });
                mailboxes.push(mailbox);
            }
            (core, mailboxes)
        });
        CoreHarness { executor, core, mailboxes, nudge: Rc::new(Nudge::start()) }
    }

    /// Hands `element` to the modules as an inline enable of a Bind 2 request from
    /// `fuzz@localhost/a` (XEP-0386); what goes into `<bound/>`, or `None` if no
    /// enabled module offers its namespace.
    pub fn inline_enable(&self, element: &[u8]) -> Option<Vec<u8>> {
        let core = self.core.clone();
        let element = element.to_vec();
        self.executor.run(async move {
            // Invariant: constant, valid JID.
            let jid = "fuzz@localhost/a".parse().expect("a valid JID");
            let mut out = Vec::new();
            let mut sender = crate::module::Sender { jid: &jid, session: SessionId(1), out: &mut out };
            core.inline_enable(&mut sender, &element)
        })
    }

    /// The resources of `bare` as the modules see them.
    pub fn resources(&self, bare: &str) -> Vec<crate::module::Resource> {
        let core = self.core.clone();
        let bare = bare.to_owned();
        self.executor.run(async move { core.resources(&bare) })
    }

    /// Pushes a stanza to `fuzz@localhost/a` through the `on_push` hooks, as a
    /// delivery would; [`CoreHarness::feed`] returns what reached its mailbox.
    pub fn push_to_sender(&self, bytes: &[u8]) {
        let core = self.core.clone();
        let bytes = bytes.to_vec();
        self.executor.run(async move {
            if let Some(resource) =
                core.resources("fuzz@localhost").into_iter().find(|r| &*r.full == "fuzz@localhost/a")
            {
                core.push_to(&resource, &bytes);
            }
        })
    }

    /// Handles `input` as bytes from `fuzz@localhost/a`'s client (after a stream
    /// header), waits for what it started, and returns the bytes the client and the
    /// peer would have received. Stream errors end the input, as they end a stream.
    pub fn feed(&self, input: &[u8]) -> Vec<u8> {
        let core = self.core.clone();
        let mailboxes = self.mailboxes.clone();
        let input = input.to_vec();
        let nudge = self.nudge.clone();
        self.executor.run(async move {
            // Invariant: constant, valid JID.
            let jid = "fuzz@localhost/a".parse().expect("a valid JID");
            let mut state = State::new(jid, SessionId(1), u16::MAX, None);
            let mut framer = Framer::new(FramerLimits::DEFAULT);
            let mut header: &[u8] = HEADER;
            let _ = framer.next(&mut header);
            let mut rest = &input[..];
            while let Ok(Some(Frame::Element(element))) = framer.next(&mut rest) {
                let element = element.to_vec();
                match crate::session::handle_element(&core, &mut state, &element) {
                    Ok(Some(pending)) => {
                        let reply = nudge.wait(glommio::timer::timeout(SETTLE, async { Ok(pending.await) })).await;
                        state.out.extend_from_slice(&reply.unwrap_or_default());
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
                core.take_congestion();
            }
            // Background work (storage writes, the archive writer) gets its turn.
            let asleep = Instant::now();
            nudge.wait(glommio::timer::sleep(Duration::from_millis(5))).await;
            if asleep.elapsed() >= NUDGE_EVERY {
                // Woken by the nudge (or the machine is very busy).
                eprintln!("fuzz harness: a 5 ms sleep took {:?}; the executor missed its timer?", asleep.elapsed());
            }
            let mut out = std::mem::take(&mut state.out);
            for mailbox in &mailboxes {
                mailbox.drain_into(&mut out, usize::MAX, usize::MAX);
            }
            out
        })
    }
}
