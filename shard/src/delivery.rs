//! Where a stanza for a local account goes: RFC 6121 section 8.5 (and RFC 6120
//! sections 8.3.1 and 10.5) as one pure function of the stanza's kind and type, the
//! address (bare or full JID), whether the account exists, and its resources.
//!
//! ```text
//!   (kind, type) x (bare | full: matching resource or not) x account exists
//!      x resources (available?, priority) --decide--> Decision
//! ```
//! The choices where the RFC leaves one ("silently ignore or return an error") are
//! the ones MongooseIM and ejabberd make; each is cited in the table test below.
//! Features refine the decision afterwards in their `on_deliver` hooks (blocking
//! bounces, offline storage takes `Store`, presence answers probes).

use starling_wire::error::StanzaErrorCondition;
use starling_wire::stanza::{IqType, MessageType, PresenceType};

/// A stanza's kind and type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message(MessageType),
    Presence(PresenceType),
    Iq(IqType),
}

/// How the stanza is addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    /// `localpart@domainpart`.
    Bare,
    /// `localpart@domainpart/resourcepart`, and the index of the resource with that
    /// name, if the account has one.
    Full(Option<usize>),
}

/// One resource of the account, as delivery sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// It sent available presence (RFC 6121 section 4.1); otherwise only connected.
    pub available: bool,
    pub priority: i8,
}

/// What RFC 6121 section 8.5 says to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Deliver to these resources (indexes into the candidates).
    Deliver(Vec<usize>),
    /// No resource takes it: store it offline (XEP-0160) if a module does, else
    /// answer `service-unavailable` (sections 8.5.2.2.1 and 8.5.3.2.1).
    Store,
    /// Answer the sender with this error (never for an error stanza).
    Error(StanzaErrorCondition),
    /// Silently ignore.
    Ignore,
    /// An IQ get or set the server answers on the account's behalf (section 8.5.2.1.3).
    OnBehalf,
    /// Subscription presence: handled for the account by section 3's rules.
    Subscription,
    /// A presence probe: answered for the account by section 4.3.
    Probe,
}

/// The decision for a stanza of `kind` sent to `address` of an account that exists
/// (`account_exists`) with `resources` (all connected resources of the account, on
/// every node).
pub fn decide(kind: Kind, address: Address, account_exists: bool, resources: &[Candidate]) -> Decision {
    if !account_exists {
        return no_such_user(kind);
    }
    match address {
        Address::Bare => to_bare(kind, resources),
        Address::Full(Some(index)) => to_full_match(kind, index),
        Address::Full(None) => to_full_no_match(kind, resources),
    }
}

/// Section 8.5.1.
fn no_such_user(kind: Kind) -> Decision {
    match kind {
        // RFC 6120 section 8.3.1: an error (or a result) is never answered.
        Kind::Iq(IqType::Result | IqType::Error) => Decision::Ignore,
        Kind::Iq(_) => Decision::Error(StanzaErrorCondition::ServiceUnavailable),
        Kind::Message(MessageType::Headline | MessageType::Error) => Decision::Ignore,
        Kind::Message(_) => Decision::Error(StanzaErrorCondition::ServiceUnavailable),
        Kind::Presence(_) => Decision::Ignore,
    }
}

/// Section 8.5.2 (8.5.2.1 with available or connected resources, 8.5.2.2 without).
fn to_bare(kind: Kind, resources: &[Candidate]) -> Decision {
    match kind {
        Kind::Message(MessageType::Normal | MessageType::Chat) => match highest(resources) {
            top if top.is_empty() => Decision::Store,
            top => Decision::Deliver(top),
        },
        Kind::Message(MessageType::Groupchat) => Decision::Error(StanzaErrorCondition::ServiceUnavailable),
        Kind::Message(MessageType::Headline) => match non_negative(resources) {
            all if all.is_empty() => Decision::Ignore,
            all => Decision::Deliver(all),
        },
        Kind::Message(MessageType::Error) => Decision::Ignore,
        Kind::Presence(PresenceType::Available | PresenceType::Unavailable) => {
            let available: Vec<usize> = (0..resources.len()).filter(|&i| resources[i].available).collect();
            if available.is_empty() {
                Decision::Ignore
            } else {
                Decision::Deliver(available)
            }
        }
        Kind::Presence(
            PresenceType::Subscribe | PresenceType::Subscribed | PresenceType::Unsubscribe | PresenceType::Unsubscribed,
        ) => Decision::Subscription,
        Kind::Presence(PresenceType::Probe) => Decision::Probe,
        Kind::Presence(PresenceType::Error) => Decision::Ignore,
        Kind::Iq(IqType::Get | IqType::Set) => Decision::OnBehalf,
        Kind::Iq(IqType::Result | IqType::Error) => Decision::Ignore,
    }
}

/// Section 8.5.3.1: the resource exists.
fn to_full_match(kind: Kind, index: usize) -> Decision {
    match kind {
        Kind::Presence(
            PresenceType::Subscribe | PresenceType::Subscribed | PresenceType::Unsubscribe | PresenceType::Unsubscribed,
        ) => Decision::Subscription,
        Kind::Presence(PresenceType::Probe) => Decision::Probe,
        _ => Decision::Deliver(vec![index]),
    }
}

/// Section 8.5.3.2: no resource of that name.
fn to_full_no_match(kind: Kind, resources: &[Candidate]) -> Decision {
    match kind {
        // 8.5.3.2.1: a chat message goes to the other resources, as if to the bare JID.
        Kind::Message(MessageType::Chat) => match highest(resources) {
            top if top.is_empty() => Decision::Store,
            top => Decision::Deliver(top),
        },
        Kind::Message(MessageType::Normal | MessageType::Groupchat) => {
            Decision::Error(StanzaErrorCondition::ServiceUnavailable)
        }
        Kind::Message(MessageType::Headline | MessageType::Error) => Decision::Ignore,
        // 8.5.3.2.2.
        Kind::Presence(PresenceType::Subscribe) => Decision::Subscription,
        Kind::Presence(PresenceType::Probe) => Decision::Probe,
        Kind::Presence(_) => Decision::Ignore,
        // 8.5.3.2.3 (and RFC 6120 section 8.3.1 for results and errors).
        Kind::Iq(IqType::Get | IqType::Set) => Decision::Error(StanzaErrorCondition::ServiceUnavailable),
        Kind::Iq(IqType::Result | IqType::Error) => Decision::Ignore,
    }
}

/// The available resources with the highest non-negative priority (section
/// 8.5.2.1.1: "the most available resource(s)"; several with equal priority all get
/// it, as MongooseIM does).
fn highest(resources: &[Candidate]) -> Vec<usize> {
    let top = resources.iter().filter(|r| r.available && r.priority >= 0).map(|r| r.priority).max();
    match top {
        None => Vec::new(),
        Some(top) => (0..resources.len()).filter(|&i| resources[i].available && resources[i].priority == top).collect(),
    }
}

/// Every available resource with a non-negative priority.
fn non_negative(resources: &[Candidate]) -> Vec<usize> {
    (0..resources.len()).filter(|&i| resources[i].available && resources[i].priority >= 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use StanzaErrorCondition::ServiceUnavailable as Su;

    const M: fn(MessageType) -> Kind = Kind::Message;
    const P: fn(PresenceType) -> Kind = Kind::Presence;
    const I: fn(IqType) -> Kind = Kind::Iq;

    fn r(available: bool, priority: i8) -> Candidate {
        Candidate { available, priority }
    }

    /// Every branch of RFC 6121 section 8.5, one row each, with the subsection.
    #[test]
    fn rfc6121_section_8_5_table() {
        use IqType as It;
        use MessageType as Mt;
        use PresenceType as Pt;
        let none: &[Candidate] = &[];
        let one = &[r(true, 0)];
        let two_top = &[r(true, 5), r(true, 5), r(true, 1)];
        let negative = &[r(true, -1)];
        let connected = &[r(false, 0)];
        let mixed = &[r(true, -1), r(true, 2), r(false, 9)];
        #[rustfmt::skip]
        type Row<'a> = (&'a str, Kind, Address, bool, &'a [Candidate], Decision);
        let rows: Vec<Row<'_>> = vec![
            // 8.5.1 No such user.
            ("8.5.1 iq get, no user", I(It::Get), Address::Bare, false, none, Error(Su)),
            ("8.5.1 iq set to full, no user", I(It::Set), Address::Full(None), false, none, Error(Su)),
            ("8.5.1 + 6120 8.3.1 iq result, no user", I(It::Result), Address::Bare, false, none, Ignore),
            ("8.5.1 + 6120 8.3.1 iq error, no user", I(It::Error), Address::Bare, false, none, Ignore),
            ("8.5.1 chat, no user", M(Mt::Chat), Address::Bare, false, none, Error(Su)),
            ("8.5.1 normal to full, no user", M(Mt::Normal), Address::Full(None), false, none, Error(Su)),
            ("8.5.1 + 8.5.4 groupchat, no user", M(Mt::Groupchat), Address::Bare, false, none, Error(Su)),
            ("8.5.1 + 8.5.4 headline, no user", M(Mt::Headline), Address::Bare, false, none, Ignore),
            ("8.5.1 + 6120 8.3.1 error message, no user", M(Mt::Error), Address::Bare, false, none, Ignore),
            ("8.5.1 presence, no user", P(Pt::Available), Address::Bare, false, none, Ignore),
            ("8.5.1 subscribe, no user", P(Pt::Subscribe), Address::Bare, false, none, Ignore),
            ("8.5.1 probe, no user", P(Pt::Probe), Address::Bare, false, none, Ignore),
            // 8.5.2.1.1 Message to the bare JID, resources available.
            ("8.5.2.1.1 normal, one non-negative", M(Mt::Normal), Address::Bare, true, one, Deliver(vec![0])),
            ("8.5.2.1.1 chat, highest priority ones", M(Mt::Chat), Address::Bare, true, two_top, Deliver(vec![0, 1])),
            ("8.5.2.1.1 chat, never to a negative priority", M(Mt::Chat), Address::Bare, true, mixed, Deliver(vec![1])),
            ("8.5.2.1.1 chat, only negative: store", M(Mt::Chat), Address::Bare, true, negative, Store),
            ("8.5.2.1.1 normal, only negative: store", M(Mt::Normal), Address::Bare, true, negative, Store),
            ("8.5.2.1.1 groupchat: error", M(Mt::Groupchat), Address::Bare, true, one, Error(Su)),
            (
                "8.5.2.1.1 headline to all non-negative",
                M(Mt::Headline),
                Address::Bare,
                true,
                two_top,
                Deliver(vec![0, 1, 2]),
            ),
            ("8.5.2.1.1 headline, only negative: ignore", M(Mt::Headline), Address::Bare, true, negative, Ignore),
            ("8.5.2.1.1 error message: ignore", M(Mt::Error), Address::Bare, true, one, Ignore),
            // 8.5.2.1.2 Presence to the bare JID.
            (
                "8.5.2.1.2 available presence to all available",
                P(Pt::Available),
                Address::Bare,
                true,
                mixed,
                Deliver(vec![0, 1]),
            ),
            (
                "8.5.2.1.2 unavailable presence to all available",
                P(Pt::Unavailable),
                Address::Bare,
                true,
                one,
                Deliver(vec![0]),
            ),
            ("8.5.2.1.2 subscription: section 3", P(Pt::Subscribed), Address::Bare, true, one, Subscription),
            ("8.5.2.1.2 probe: section 4.3", P(Pt::Probe), Address::Bare, true, one, Probe),
            // 8.5.2.1.3 IQ to the bare JID.
            ("8.5.2.1.3 iq get: on behalf", I(It::Get), Address::Bare, true, one, OnBehalf),
            ("8.5.2.1.3 iq result: ignore", I(It::Result), Address::Bare, true, one, Ignore),
            // 8.5.2.2 No available or connected resources.
            ("8.5.2.2.1 chat, none: store", M(Mt::Chat), Address::Bare, true, none, Store),
            ("8.5.2.2.1 normal, only connected: store", M(Mt::Normal), Address::Bare, true, connected, Store),
            ("8.5.2.2.1 groupchat, none: error", M(Mt::Groupchat), Address::Bare, true, none, Error(Su)),
            ("8.5.2.2.1 headline, none: ignore", M(Mt::Headline), Address::Bare, true, none, Ignore),
            ("8.5.2.2.2 presence, none: ignore", P(Pt::Available), Address::Bare, true, connected, Ignore),
            ("8.5.2.2.2 subscribe, none: section 3", P(Pt::Subscribe), Address::Bare, true, none, Subscription),
            ("8.5.2.2.2 probe, none: section 4.3", P(Pt::Probe), Address::Bare, true, none, Probe),
            ("8.5.2.2.3 iq set, none: on behalf", I(It::Set), Address::Bare, true, none, OnBehalf),
            // 8.5.3.1 Full JID, the resource exists.
            ("8.5.3.1 message to the resource", M(Mt::Normal), Address::Full(Some(2)), true, mixed, Deliver(vec![2])),
            (
                "8.5.3.1 message even at negative priority",
                M(Mt::Chat),
                Address::Full(Some(0)),
                true,
                negative,
                Deliver(vec![0]),
            ),
            ("8.5.3.1 presence to the resource", P(Pt::Available), Address::Full(Some(0)), true, one, Deliver(vec![0])),
            ("8.5.3.1 iq get to the resource", I(It::Get), Address::Full(Some(0)), true, one, Deliver(vec![0])),
            ("8.5.3.1 iq result to the resource", I(It::Result), Address::Full(Some(0)), true, one, Deliver(vec![0])),
            ("8.5.3.1 subscription: section 3", P(Pt::Subscribe), Address::Full(Some(0)), true, one, Subscription),
            ("8.5.3.1 probe: section 4.3", P(Pt::Probe), Address::Full(Some(0)), true, one, Probe),
            // 8.5.3.2.1 Full JID, no such resource: messages.
            ("8.5.3.2.1 normal: error", M(Mt::Normal), Address::Full(None), true, two_top, Error(Su)),
            ("8.5.3.2.1 groupchat: error", M(Mt::Groupchat), Address::Full(None), true, one, Error(Su)),
            ("8.5.3.2.1 headline: ignore", M(Mt::Headline), Address::Full(None), true, two_top, Ignore),
            (
                "8.5.3.2.1 chat: to the other resources",
                M(Mt::Chat),
                Address::Full(None),
                true,
                two_top,
                Deliver(vec![0, 1]),
            ),
            ("8.5.3.2.1 chat, none available: store", M(Mt::Chat), Address::Full(None), true, connected, Store),
            ("8.5.3.2.1 chat, only negative: store", M(Mt::Chat), Address::Full(None), true, negative, Store),
            ("8.5.3.2.1 error message: ignore", M(Mt::Error), Address::Full(None), true, one, Ignore),
            // 8.5.3.2.2 Presence.
            ("8.5.3.2.2 available presence: ignore", P(Pt::Available), Address::Full(None), true, one, Ignore),
            ("8.5.3.2.2 subscribe: section 3.1.3", P(Pt::Subscribe), Address::Full(None), true, one, Subscription),
            ("8.5.3.2.2 subscribed: ignore", P(Pt::Subscribed), Address::Full(None), true, one, Ignore),
            ("8.5.3.2.2 unsubscribed: ignore", P(Pt::Unsubscribed), Address::Full(None), true, one, Ignore),
            ("8.5.3.2.2 probe: section 4.3", P(Pt::Probe), Address::Full(None), true, one, Probe),
            // 8.5.3.2.3 IQ.
            ("8.5.3.2.3 iq get: error", I(It::Get), Address::Full(None), true, one, Error(Su)),
            ("8.5.3.2.3 + 6120 8.3.1 iq error: ignore", I(It::Error), Address::Full(None), true, one, Ignore),
        ];
        for (section, kind, address, exists, resources, expected) in rows {
            assert_eq!(decide(kind, address, exists, resources), expected, "{section}");
        }
    }

    proptest::proptest! {
        /// Whatever the inputs, a delivery names only existing, available resources
        /// (a full-JID match aside), never one with a negative priority for a message
        /// not sent to it, and an error is never the answer to an error stanza.
        #[test]
        fn decisions_are_well_formed(
            kind in 0u8..17, full in proptest::option::of(0usize..4), bare: bool, exists: bool,
            resources in proptest::collection::vec((proptest::bool::ANY, -3i8..3), 0..4),
        ) {
            let kinds = [
                M(MessageType::Normal), M(MessageType::Chat), M(MessageType::Groupchat), M(MessageType::Headline),
                M(MessageType::Error), P(PresenceType::Available), P(PresenceType::Unavailable),
                P(PresenceType::Subscribe), P(PresenceType::Subscribed), P(PresenceType::Unsubscribe),
                P(PresenceType::Unsubscribed), P(PresenceType::Probe), P(PresenceType::Error),
                I(IqType::Get), I(IqType::Set), I(IqType::Result), I(IqType::Error),
            ];
            let kind = kinds[kind as usize];
            let candidates: Vec<Candidate> = resources.iter().map(|&(a, p)| r(a, p)).collect();
            let full = full.filter(|&i| i < candidates.len());
            let address = if bare { Address::Bare } else { Address::Full(full) };
            match decide(kind, address, exists, &candidates) {
                Deliver(targets) => {
                    proptest::prop_assert!(!targets.is_empty());
                    for t in targets {
                        proptest::prop_assert!(t < candidates.len());
                        if Some(t) != full || bare {
                            proptest::prop_assert!(candidates[t].available);
                            if matches!(kind, Kind::Message(_)) {
                                proptest::prop_assert!(candidates[t].priority >= 0);
                            }
                        }
                    }
                }
                Error(_) => proptest::prop_assert!(!matches!(
                    kind,
                    Kind::Message(MessageType::Error) | Kind::Iq(IqType::Error | IqType::Result) | Kind::Presence(_)
                )),
                _ => {}
            }
        }
    }
}
