//! Containment: a panic while handling one stanza or one connection ends only that
//! stream; the core and every other session carry on.
//!
//! ```text
//!   stanza handler --panic--> catch_unwind in session::pump --> internal-server-error
//!                                                              to this client only
//!   connection / background task --panic--> spawn_contained --> logged, counted
//!   anything else --panic--> the executor thread dies --> Node's watchdog stops the
//!                                                         process (never half-alive)
//! ```
//! Panics are bugs of ours; peer input must never cause one. The log names what was
//! being handled (a stanza's name and namespace), never its content.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_lite::FutureExt;

use crate::core::Core;

/// Runs `work`, catching a panic; `Err(())` (already logged and counted) if it panicked.
pub(crate) fn call<T>(core: &Core, what: &dyn Fn() -> String, work: impl FnOnce() -> T) -> Result<T, ()> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|_| caught(core, &what()))
}

/// Awaits `work`, catching a panic like [`call`].
pub(crate) async fn wait<T>(core: &Core, what: &str, work: impl Future<Output = T>) -> Result<T, ()> {
    AssertUnwindSafe(work).catch_unwind().await.map_err(|_| caught(core, what))
}

/// Spawns a detached task on this core whose panic is logged and counted instead of
/// taking the core down.
pub(crate) fn spawn(core: std::rc::Rc<Core>, what: &'static str, work: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(contained(core, what, work)).detach();
}

/// The future [`spawn`] runs: `work` behind a panic catch, boxed. Boxed because an
/// async block keeps its captures apart from the state of what it awaits: passing
/// `work` by value through `wait` kept an idle session's future three times over
/// (2.5 KB a session, found with heaptrack on the connect profile). Now the task
/// holds a pointer and the box holds `work` once (`budget.rs` pins both).
pub(crate) fn contained(
    core: std::rc::Rc<Core>,
    what: &'static str,
    work: impl Future<Output = ()> + 'static,
) -> impl Future<Output = ()> + 'static {
    let work = Box::pin(AssertUnwindSafe(work).catch_unwind());
    async move {
        if work.await.is_err() {
            caught(&core, what);
        }
    }
}

fn caught(core: &Core, what: &str) {
    core.stats.panics.set(core.stats.panics.get() + 1);
    log::error!("core {}: a panic while handling {what} was contained (a bug: please report it)", core.id);
}

/// "a `<name>` stanza (`namespace`)" for a top-level element: its name and its first
/// child's namespace, read without trusting the bytes (never the content).
pub(crate) fn describe(stanza: &[u8]) -> String {
    let name: String = stanza
        .iter()
        .skip(1)
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'))
        .take(32)
        .map(|&b| b as char)
        .collect();
    let body = stanza.iter().position(|&b| b == b'>').map_or(&[][..], |end| &stanza[end..]);
    let namespace = find(body, b"xmlns=")
        .and_then(|at| body.get(at + 7..))
        .map(|rest| {
            rest.iter().take_while(|&&b| b != b'\'' && b != b'"').take(64).map(|&b| b as char).collect::<String>()
        })
        .unwrap_or_default();
    format!("a <{name}> stanza ({namespace})")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Test builds with the `fault-injection` feature: the stanza
/// `<iq type='get'><panic xmlns='urn:starling:fault'/></iq>` panics inside its handler
/// (contained), and `<kill-core xmlns='urn:starling:fault'/>` panics outside any
/// containment (the core dies, so the process must stop).
#[cfg(feature = "fault-injection")]
pub(crate) fn inject(core: &Core, stanza: &[u8]) {
    if find(stanza, b"<panic xmlns='urn:starling:fault'").is_some() {
        panic!("injected fault");
    }
    if find(stanza, b"<kill-core xmlns='urn:starling:fault'").is_some() {
        log::error!("core {}: killing this core on request (fault injection)", core.id);
        // Outside the handler's containment: a task of its own, run by the executor later.
        glommio::spawn_local(async {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            panic!("injected core death")
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The description names the stanza and its payload namespace, nothing else,
    /// and survives any bytes.
    #[test]
    fn describes_without_content() {
        let text = describe(b"<iq type='set' id='secret'><query xmlns='jabber:iq:roster'><item jid='x'/></query></iq>");
        assert_eq!(text, "a <iq> stanza (jabber:iq:roster)");
        assert_eq!(describe(b"<message to='a'><body>hi</body></message>"), "a <message> stanza ()");
        for bytes in [&b""[..], b"<", b"<a>xmlns=", b"\xff\xfe>xmlns='\xff"] {
            let _ = describe(bytes);
        }
    }
}
