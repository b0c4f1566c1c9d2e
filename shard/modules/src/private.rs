//! `mod_private`: private XML storage (XEP-0049): one document per (element name,
//! namespace) per account, readable and writable only by the account itself.

use std::rc::Rc;

use starling_shard::module::{Iq, IqRoute, IqScope, Module, Reply};
use starling_shard::Core;
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::BareJid;
use starling_wire::stanza::IqType;

use crate::store::DataKind;
use crate::Ctx;

pub const NS_PRIVATE: &str = "jabber:iq:private";

/// Bytes of one stored document; larger ones get `not-acceptable`.
pub const PRIVATE_BYTES_MAX: usize = 32 * 1024;

pub(crate) const SERVER_FEATURES: &[&str] = &[NS_PRIVATE];

const IQS: &[IqRoute] = &[IqRoute { namespace: NS_PRIVATE, element: "query", scopes: &[IqScope::OwnAccount] }];

/// The private storage module of one core.
pub struct Private {
    ctx: Rc<Ctx>,
}

impl Private {
    pub fn new(ctx: Rc<Ctx>) -> Private {
        Private { ctx }
    }
}

impl Module for Private {
    fn name(&self) -> &'static str {
        "mod_private"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, _core: &Core, iq: &Iq<'_>) -> Reply {
        let mut children = iq.child.children().filter(|c| c.is_element());
        let (Some(child), None) = (children.next(), children.next()) else {
            return iq.error(StanzaErrorCondition::BadRequest);
        };
        // XEP-0049 section 3: the child must be qualified by a namespace other than ours.
        let namespace = child.tag_name().namespace().unwrap_or("");
        let source = iq.text.get(child.range()).unwrap_or_default();
        if namespace.is_empty() || namespace == NS_PRIVATE || source.len() > PRIVATE_BYTES_MAX {
            return iq.error(StanzaErrorCondition::NotAcceptable);
        }
        let Ok(user) = iq.account.parse::<BareJid>() else { return iq.error(StanzaErrorCondition::BadRequest) };
        let key = format!("{} {namespace}", child.tag_name().name());
        let request = iq.request();
        let owner = user.clone();
        if iq.kind == IqType::Set {
            let value = source.as_bytes().to_vec();
            let write = self
                .ctx
                .db
                .run_for(user.as_str(), move |store| store.set_data(&owner, DataKind::Private, &key, Some(&value)));
            return Reply::Later(Box::pin(async move {
                match write.await {
                    Ok(()) => request.result(b""),
                    Err(_) => request.error(StanzaErrorCondition::InternalServerError),
                }
            }));
        }
        let empty = source.as_bytes().to_vec();
        let read = self.ctx.db.run_for(user.as_str(), move |store| store.data(&owner, DataKind::Private, &key));
        Reply::Later(Box::pin(async move {
            match read.await {
                Ok(stored) => {
                    let mut query = b"<query xmlns='jabber:iq:private'>".to_vec();
                    query.extend_from_slice(stored.as_deref().unwrap_or(&empty));
                    query.extend_from_slice(b"</query>");
                    request.result(&query)
                }
                Err(_) => request.error(StanzaErrorCondition::InternalServerError),
            }
        }))
    }
}
