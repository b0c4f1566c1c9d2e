//! The memory budget of an idle authenticated session, pinned by a test.
//!
//! An idle plain-TCP session holds, on its home core:
//! - the session task: glommio's task header plus the `session::run` future, which
//!   owns the socket (`Io`), the framer and the session state;
//! - glommio's readiness registration for the socket (a pending poll source);
//! - its mailbox (`Rc<Mailbox>`, empty queue, no buffer);
//! - its session-table entry (`Session`, plus its slot in the account's `Vec`) and the
//!   account key;
//! - its entry in the core's live-connection map (id -> mailbox);
//! - the full JID text (twice: session entry and session state) and the bare JID key.
//!
//! No read buffer: reads use the core's shared buffer. No write buffer: it is freed
//! when empty. Work that waits for storage and the account load at login run in boxed
//! futures, so the idle task does not reserve room for them. TLS sessions add rustls' connection state on top (not counted here).

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::sync::Arc;

    use starling_wire::framer::Framer;
    use starling_wire::jid::FullJid;
    use starling_wire::limits::FramerLimits;

    use crate::core::{Core, Shared};
    use crate::db::{AuthStore, DbPool, StoreError, StoreFactory};
    use crate::io::Io;
    use crate::mailbox::Mailbox;
    use crate::sessions::{Session, SessionId};
    use crate::settings::Settings;

    /// Bytes of heap a `Box<str>`/`String` of `len` bytes costs with a size-class
    /// allocator (rounded to 16, plus no header with mimalloc's small pages).
    fn heap(len: usize) -> usize {
        len.div_ceil(16) * 16
    }

    /// The inline and heap cost of one idle plain-TCP session stays within 1,850
    /// bytes (the loadgen measures the whole process; this catches regressions in the
    /// parts we own).
    #[test]
    fn idle_session_budget() {
        let factory: Arc<StoreFactory<dyn AuthStore>> = Arc::new(|| Err(StoreError::Unavailable("none".into())));
        let (db, threads) = DbPool::start(1, 4, factory);
        let settings = Settings::one_core(Arc::new(|_| Vec::new()));
        let shared = Arc::new(Shared::new(settings, Arc::new(db)));
        let executor =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(64 * 1024).make().unwrap();
        let (future_bytes, task_bytes) = executor.run(async move {
            let core = Core::new(0, 1, shared);
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let client = glommio::net::TcpStream::connect(address).await.unwrap();
            let server = listener.accept().await.unwrap();
            let jid: FullJid = "user123456@localhost/abcdef0123456789".parse().unwrap();
            let io = Io::new(server, crate::io::Moving::default());
            let future = crate::session::run(
                core.clone(),
                io,
                Framer::new(FramerLimits::DEFAULT),
                crate::session::State::new(jid, SessionId(1), 0, None),
                Rc::new(Mailbox::default()),
            );
            let bytes = std::mem::size_of_val(&future);
            // What the task itself holds: `contain::spawn` boxes the session's future.
            let task = crate::contain::contained(core.clone(), "a session", future);
            let task_bytes = std::mem::size_of_val(&task);
            drop(task);
            drop(client);
            (bytes, task_bytes)
        });
        drop(executor);
        threads.join();

        let jid_text = "user123456@localhost/abcdef0123456789".len();
        let bare_text = "user123456@localhost".len();
        let task_header = 64; // glommio's task header (state, vtable, waker refs)
                              // glommio's pending readiness `Source` with its waker slots: 496 B measured with
                              // heaptrack on the connect profile (2026-11-29; the research notes' 256 was low).
        let poll_source = 496;
        let mailbox = heap(std::mem::size_of::<Mailbox>() + 16);
        let table = std::mem::size_of::<Session>() + bare_text.div_ceil(16) * 16 + 48;
        let live = 8 + 8 + 16;
        let jids = heap(jid_text) * 2;
        let total = future_bytes + task_bytes + task_header + poll_source + mailbox + table + live + jids;
        println!("session future {future_bytes} B, task {task_bytes} B, total idle session ~{total} B");
        // Regression (heaptrack, connect profile): the containment wrapper moved the
        // session's future through two async layers and the task held it three times
        // (2.5 KB). The task now holds a pointer to it and little else.
        assert!(task_bytes <= 64, "the session task holds {task_bytes} bytes besides the session's future");
        // 768 before containment (issue 9); the session task now owns its core handle and
        // a drop guard that unbinds the session even when a panic unwinds it (+40 B).
        // Issue 10 (+32 B): the connection's place in its address's count (16 B), the
        // listener's shaper bucket (8 B, µs) and the shaper's pause (8 B, µs).
        // Issue 12: +8 B for a WebSocket's framing (a pointer in `Io`), +8 B for stream
        // management (a pointer in `State`); the end of a session (parking, closing)
        // moved into a boxed future made at the end, which took 32 B out: 816.
        assert!(future_bytes <= 816, "session future grew to {future_bytes} bytes");
        // 1,600 until 2026-11-29, when the poll source was measured at 496 B, not 256,
        // and the task's own 48 B were first counted: the same session, counted right.
        // Issue 10's shaper and address count: +32 B (see above). Issue 16 owes the cut.
        assert!(total <= 1880, "idle session budget exceeded: {total} bytes");
    }
}
