//! What a core offers its modules (`module.rs`): the sessions of an account, routing,
//! pushes, session state other nodes see, events to other nodes, background work.
//! Every call is synchronous and cheap unless it says otherwise; none blocks.

use std::future::Future;
use std::rc::Rc;

use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::BareJid;
use starling_wire::stanza::Stanza;

use crate::core::Core;
use crate::module::{Resource, Sender, SessionFlags};
use crate::sessions::{Session, SessionId};

impl Core {
    /// This core's index on its node.
    pub fn index(&self) -> usize {
        self.id
    }

    /// The domains this node serves (normalised).
    pub fn hosts(&self) -> &[String] {
        &self.shared.settings.hosts
    }

    /// Whether `domain` is served here.
    pub fn serves(&self, domain: &str) -> bool {
        self.shared.settings.hosts.iter().any(|host| host == domain)
    }

    /// This node's number in the cluster (`discovery_nodes.node_num`); 0 alone.
    pub fn node_num(&self) -> u16 {
        self.cluster.as_ref().map_or(0, |c| c.node_num())
    }

    /// How long this core has run.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Runs `work` on this core in the background; a panic in it is contained.
    pub fn spawn(&self, what: &'static str, work: impl Future<Output = ()> + 'static) {
        crate::contain::spawn(self.rc(), what, work);
    }

    /// The sessions of `bare` on this core (all of the account's sessions on this
    /// node: they live on its home core). Do not hold it across a call that binds or
    /// unbinds sessions.
    pub fn sessions_of(&self, bare: &str) -> std::cell::Ref<'_, [Session]> {
        std::cell::Ref::map(self.sessions.borrow(), |table| table.sessions(bare))
    }

    /// The session `full` on this core, if bound.
    pub fn session_id(&self, full: &str) -> Option<SessionId> {
        self.sessions.borrow().session(full).map(|s| s.id)
    }

    /// Every resource of `bare`: sessions here and on other nodes (one allocation per
    /// resource).
    pub fn resources(&self, bare: &str) -> Vec<Resource> {
        crate::router::resources(self, bare)
    }

    /// The XEP-0386 inline features the enabled modules offer (namespaces, in module
    /// order), for the Bind 2 stream feature's `<inline/>` list.
    pub fn inline_features(&self) -> Vec<&'static str> {
        self.module_list().iter().flat_map(|m| m.inline_features().iter().copied()).collect()
    }

    /// Hands one element of a Bind 2 request (XEP-0386) for the session `sender` to
    /// the module offering its namespace; what it returns goes into `<bound/>`. `None`
    /// when no enabled module offers that namespace (the element is ignored).
    pub fn inline_enable(&self, sender: &mut Sender<'_>, element: &[u8]) -> Option<Vec<u8>> {
        let namespace = starling_wire::xml::attribute(element, b"xmlns").and_then(|a| a.value())?;
        let module = self.module_list().iter().find(|m| m.inline_features().contains(&&*namespace))?.clone();
        Some(module.on_inline_enable(self, sender, element))
    }

    /// Whether some available resource of `bare`, here or on another node, has the
    /// module flag `flag` set (no allocation: a check before building copies).
    pub fn any_available_with_flag(&self, bare: &str, flag: u8) -> bool {
        crate::router::any_available_with_flag(self, bare, flag)
    }

    /// Sends a stamped stanza (it has `from`) to its `to`, a local account's bare or
    /// full JID, through delivery (RFC 6121 section 8.5 and every module's hooks).
    pub fn route(&self, stanza: &[u8]) {
        let Ok(parsed) = Stanza::parse(stanza) else { return };
        let Some(to) = parsed.to.and_then(|to| to.value()) else { return };
        let bare = to.split('/').next().unwrap_or(&to);
        crate::router::route(self, bare, stanza);
    }

    /// Pushes `bytes` (a whole stanza) to one resource, here through the `on_push`
    /// hooks or on the node that holds it.
    pub fn push_to(&self, resource: &Resource, bytes: &[u8]) {
        crate::router::push(self, resource, bytes, None);
    }

    /// Pushes `bytes` to the session `id` (`full`) of this core, skipping the
    /// `on_push` hooks (a module releasing what it held). False if it is gone.
    pub fn push_raw(&self, id: SessionId, full: &str, bytes: &[u8]) -> bool {
        let mailbox = self.sessions.borrow().session(full).filter(|s| s.id == id).map(|s| s.mailbox.clone());
        match mailbox {
            // Not rerouted if the session ends first: what a module pushes raw (stored
            // offline messages, held stanzas) is still its to keep or drop.
            Some(mailbox) => self.push(&mailbox, bytes, false),
            None => false,
        }
    }

    /// Resolves to true once every byte pushed to the session `id` (`full`) so far has
    /// reached its socket, false if the session ends first (or is gone).
    pub fn written(&self, id: SessionId, full: &str) -> impl Future<Output = bool> + 'static {
        let mailbox = self.sessions.borrow().session(full).filter(|s| s.id == id).map(|s| s.mailbox.clone());
        async move {
            match mailbox {
                Some(mailbox) => mailbox.written().await,
                None => false,
            }
        }
    }

    /// Answers `stanza` with `condition` from its recipient (never an error to an
    /// error or a result, RFC 6120 section 8.3.1).
    pub fn reply_error(&self, stanza: &Stanza<'_>, condition: StanzaErrorCondition) {
        crate::router::reply_error(self, stanza, condition);
    }

    /// Sets the availability and priority of the session `full` (RFC 6121 section
    /// 4: what delivery selects by), and tells the other nodes. Returns whether it
    /// was available before.
    pub fn set_availability(&self, full: &str, available: bool, priority: i8) -> bool {
        let mut sessions = self.sessions.borrow_mut();
        let Some(session) = sessions.session_mut(full) else { return false };
        let was = session.available;
        session.available = available;
        session.priority = priority;
        let entry = session.entry();
        drop(sessions);
        if let Some(cluster) = &self.cluster {
            cluster.publish(full, Some(entry));
        }
        was
    }

    /// Sets or clears module flag bits `flag` on the session `full` (replicated).
    pub fn set_session_flag(&self, full: &str, flag: u8, on: bool) {
        let mut sessions = self.sessions.borrow_mut();
        let Some(session) = sessions.session_mut(full) else { return };
        let flag = flag & SessionFlags::MODULE_BITS;
        let flags = if on { session.flags.0 | flag } else { session.flags.0 & !flag };
        if flags == session.flags.0 {
            return;
        }
        session.flags = SessionFlags(flags);
        let entry = session.entry();
        drop(sessions);
        if let Some(cluster) = &self.cluster {
            cluster.publish(full, Some(entry));
        }
    }

    /// Sends `payload` to the module `module` on every other node, for `account`
    /// (arrives as `Module::on_event` on the account's home core there).
    pub fn send_event(&self, module: &'static str, account: &str, payload: Vec<u8>) {
        if let Some(cluster) = &self.cluster {
            cluster.broadcast_event(module, account, payload);
        }
    }

    /// Whether the account exists (storage; `Err` when it cannot be asked).
    pub fn account_exists(&self, account: BareJid) -> crate::db::DbFuture<bool> {
        self.shared.accounts.exists(account)
    }

    /// Adds `by` to the counter `name` (a metric, `starling_<name>_total`): what a
    /// module did or failed to do that an operator watches.
    pub fn count(&self, name: &'static str, by: u64) {
        *self.stats.counters.borrow_mut().entry(name).or_insert(0) += by;
    }

    /// A counted handle to this core.
    pub fn handle(&self) -> Rc<Core> {
        self.rc()
    }
}
