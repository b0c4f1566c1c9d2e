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
    use crate::limits::Limits;
    use crate::mailbox::Mailbox;
    use crate::sessions::{Session, SessionId};
    use crate::settings::Settings;

    /// Bytes of heap a `Box<str>`/`String` of `len` bytes costs with a size-class
    /// allocator (rounded to 16, plus no header with mimalloc's small pages).
    fn heap(len: usize) -> usize {
        len.div_ceil(16) * 16
    }

    /// The inline and heap cost of one idle plain-TCP session stays within 1,600
    /// bytes (the loadgen measures the whole process; this catches regressions in the
    /// parts we own).
    #[test]
    fn idle_session_budget() {
        let factory: Arc<StoreFactory<dyn AuthStore>> = Arc::new(|| Err(StoreError::Unavailable("none".into())));
        let (db, threads) = DbPool::start(1, 4, factory);
        let settings = Settings {
            hosts: vec!["localhost".into()],
            cpus: vec![0],
            listeners: Vec::new(),
            framer: FramerLimits::DEFAULT,
            limits: Limits::for_tests(),
            tls_starttls: None,
            tls_direct: None,
            tls_server_end_point: None,
            cluster: None,
            modules: Arc::new(|_| Vec::new()),
        };
        let shared = Arc::new(Shared { settings, accounts: Arc::new(db) });
        let executor =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(64 * 1024).make().unwrap();
        let future_bytes = executor.run(async move {
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
                jid,
                SessionId(1),
                Rc::new(Mailbox::default()),
            );
            let bytes = std::mem::size_of_val(&future);
            drop(future);
            drop(client);
            bytes
        });
        drop(executor);
        threads.join();

        let jid_text = "user123456@localhost/abcdef0123456789".len();
        let bare_text = "user123456@localhost".len();
        let task_header = 64; // glommio's task header (state, vtable, waker refs)
        let poll_source = 256; // glommio's pending readiness `Source`, measured by the research notes (~0.9 KB per idle
                               // connection in total with its task)
        let mailbox = heap(std::mem::size_of::<Mailbox>() + 16);
        let table = std::mem::size_of::<Session>() + bare_text.div_ceil(16) * 16 + 48;
        let live = 8 + 8 + 16;
        let jids = heap(jid_text) * 2;
        let total = future_bytes + task_header + poll_source + mailbox + table + live + jids;
        println!("session future {future_bytes} B, total idle session ~{total} B");
        // 768 before containment (issue 9); the session task now owns its core handle and
        // a drop guard that unbinds the session even when a panic unwinds it (+40 B).
        assert!(future_bytes <= 816, "session future grew to {future_bytes} bytes");
        assert!(total <= 1600, "idle session budget exceeded: {total} bytes");
    }
}
