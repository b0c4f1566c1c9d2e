//! The `limit` reference server: the least an XMPP server could do for this client.
//! It answers the handshake with fixed replies (PLAIN accepted without checking, any
//! resource bound) and forwards `<message/>` stanzas to the session named by `to`,
//! byte for byte, without validating or stamping anything. One glommio executor.
//!
//! It bounds what any server could reach on this machine with this client; reports
//! give Starling's ratio to it. Never expose it: it authenticates nobody.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::net::{TcpListener, TcpStream};
use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;
use starling_wire::sasl;

#[derive(Default)]
struct Inbox {
    bytes: RefCell<Vec<u8>>,
    waker: RefCell<Option<Waker>>,
}

type Directory = Rc<RefCell<HashMap<Box<str>, Rc<Inbox>>>>;

/// Serves until the process is killed.
pub fn serve(address: SocketAddr, domain: String) -> std::io::Result<()> {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 * 1024)
        .make()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    executor.run(async move {
        let listener = TcpListener::bind(address).expect("bind the limit server");
        eprintln!("limit server on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
        let directory: Directory = Rc::default();
        let domain: Rc<str> = domain.into();
        loop {
            let Ok(stream) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            glommio::spawn_local(connection(stream, directory.clone(), domain.clone())).detach();
        }
    });
    Ok(())
}

async fn connection(mut stream: TcpStream, directory: Directory, domain: Rc<str>) {
    let inbox = Rc::new(Inbox::default());
    let mut framer = Framer::new(FramerLimits::DEFAULT);
    let mut user: Option<Box<str>> = None;
    let mut out = Vec::new();
    loop {
        if !out.is_empty() {
            if crate::net::write_all_tcp(&mut stream, &out).await.is_err() {
                break;
            }
            out.clear();
        }
        let read = futures_lite::future::poll_fn(|cx| {
            if !inbox.bytes.borrow().is_empty() {
                return Poll::Ready(Ok(usize::MAX));
            }
            let framer = &mut framer;
            match crate::net::poll_read_tcp(&mut stream, cx, &mut |bytes| framer.stash(bytes)) {
                Poll::Pending => {
                    *inbox.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
                ready => ready,
            }
        })
        .await;
        match read {
            Ok(usize::MAX) => {
                std::mem::swap(&mut out, &mut inbox.bytes.borrow_mut());
                continue;
            }
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let mut empty: &[u8] = &[];
            let frame = match framer.next(&mut empty) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return,
            };
            match frame {
                Frame::StreamHeader(_) => {
                    let features = if user.is_some() {
                        "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                    } else {
                        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"
                    };
                    out.extend_from_slice(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='limit' from='{domain}' version='1.0'><stream:features>{features}</stream:features>").as_bytes());
                }
                Frame::StreamClose => return,
                Frame::Element(element) => {
                    if element.starts_with(b"<message") {
                        forward(&directory, element);
                    } else if element.starts_with(b"<auth") {
                        let text = String::from_utf8_lossy(element);
                        let payload =
                            text.split_once('>').map(|(_, r)| r.split('<').next().unwrap_or("")).unwrap_or("");
                        let name = sasl::decode_payload(payload.as_bytes())
                            .ok()
                            .and_then(|m| sasl::parse_plain(&m).ok())
                            .map(|p| p.authcid)
                            .unwrap_or_default();
                        let key: Box<str> = format!("{name}@{domain}").into();
                        directory.borrow_mut().insert(key.clone(), inbox.clone());
                        user = Some(key);
                        out.extend_from_slice(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
                        framer.reset();
                    } else if element.starts_with(b"<iq") {
                        let id = starling_wire::xml::attribute(element, b"id")
                            .map(|a| a.raw_value.to_vec())
                            .unwrap_or_default();
                        out.extend_from_slice(b"<iq type='result' id='");
                        out.extend_from_slice(&id);
                        out.extend_from_slice(b"'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>");
                        out.extend_from_slice(user.as_deref().unwrap_or("").as_bytes());
                        out.extend_from_slice(b"/lg</jid></bind></iq>");
                    }
                }
            }
        }
    }
    if let Some(user) = user {
        directory.borrow_mut().remove(&user);
    }
}

/// Appends a message to the inbox of its `to` (bare part), as is.
fn forward(directory: &Directory, element: &[u8]) {
    let Some(to) = starling_wire::xml::attribute(element, b"to") else { return };
    let Ok(to) = std::str::from_utf8(to.raw_value) else { return };
    let bare = to.split('/').next().unwrap_or(to);
    let inbox = directory.borrow().get(bare).cloned();
    if let Some(inbox) = inbox {
        inbox.bytes.borrow_mut().extend_from_slice(element);
        if let Some(waker) = inbox.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}
