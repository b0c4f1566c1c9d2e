//! `mod_vcard`: vCard-temp (XEP-0054). A user reads and replaces its own vCard; others
//! read it through the server on the account's behalf. An account with no vCard and
//! an account that does not exist look the same to others (`service-unavailable`,
//! RFC 6121 section 8.5.1), so the answer does not tell which accounts exist.

use std::rc::Rc;

use starling_shard::module::{Iq, IqRoute, IqScope, Module, Reply, Request};
use starling_shard::Core;
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::BareJid;
use starling_wire::stanza::IqType;

use crate::store::DataKind;
use crate::Ctx;

pub const NS_VCARD: &str = "vcard-temp";

/// Bytes of one vCard; larger ones get `not-acceptable`. Half the default stanza limit
/// (64 KiB), so a client can learn the limit without losing its stream; avatars
/// belong in XEP-0084.
pub const VCARD_BYTES_MAX: usize = 32 * 1024;

pub(crate) const SERVER_FEATURES: &[&str] = &[NS_VCARD];

const IQS: &[IqRoute] =
    &[IqRoute { namespace: NS_VCARD, element: "vCard", scopes: &[IqScope::OwnAccount, IqScope::OtherAccount] }];

/// The vCard module of one core.
pub struct Vcard {
    ctx: Rc<Ctx>,
}

impl Vcard {
    pub fn new(ctx: Rc<Ctx>) -> Vcard {
        Vcard { ctx }
    }
}

impl Module for Vcard {
    fn name(&self) -> &'static str {
        "mod_vcard"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, _core: &Core, iq: &Iq<'_>) -> Reply {
        let Ok(user) = iq.account.parse::<BareJid>() else { return iq.error(StanzaErrorCondition::BadRequest) };
        let own = iq.scope == IqScope::OwnAccount;
        match iq.kind {
            IqType::Get => Reply::Later(Box::pin(read(self.ctx.clone(), user, iq.request(), own))),
            _ if !own => iq.error(StanzaErrorCondition::Forbidden),
            _ => {
                let source = iq.text.get(iq.child.range()).unwrap_or_default();
                if source.len() > VCARD_BYTES_MAX {
                    return iq.error(StanzaErrorCondition::NotAcceptable);
                }
                let value = source.as_bytes().to_vec();
                let owner = user.clone();
                let request = iq.request();
                let write = self
                    .ctx
                    .db
                    .run_for(user.as_str(), move |store| store.set_data(&owner, DataKind::Vcard, "", Some(&value)));
                Reply::Later(Box::pin(async move {
                    match write.await {
                        Ok(()) => request.result(b""),
                        Err(error) => {
                            log::warn!("vcard: storing the vCard of {user} failed: {error}");
                            request.error(StanzaErrorCondition::InternalServerError)
                        }
                    }
                }))
            }
        }
    }
}

/// Answers a vCard get for `user`: the stored vCard; for the user itself an empty one
/// when none is stored (XEP-0054 section 3.1), for others `service-unavailable`.
async fn read(ctx: Rc<Ctx>, user: BareJid, request: Request, own: bool) -> Vec<u8> {
    let key = user.clone();
    match ctx.db.run_for(user.as_str(), move |store| store.data(&key, DataKind::Vcard, "")).await {
        Ok(Some(vcard)) => request.result(&vcard),
        Ok(None) if own => request.result(b"<vCard xmlns='vcard-temp'/>"),
        Ok(None) => request.error(StanzaErrorCondition::ServiceUnavailable),
        Err(error) => {
            log::warn!("vcard: reading the vCard of {user} failed: {error}");
            request.error(StanzaErrorCondition::InternalServerError)
        }
    }
}
