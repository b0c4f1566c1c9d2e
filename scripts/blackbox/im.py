"""Black-box test of the IM features with real slixmpp clients and their plugins.

alice (STARTTLS) and bob (direct TLS) build a mutual subscription through slixmpp's
roster handling (RFC 6121), then exercise service discovery (XEP-0030), software
version (XEP-0092), personal eventing with caps (XEP-0163, XEP-0115, XEP-0107),
vCards (XEP-0054), blocking (XEP-0191), carbons (XEP-0280), the
message archive (XEP-0313 with XEP-0059), client state indication (XEP-0352), last
activity (XEP-0012), offline delivery (XEP-0160 with XEP-0203 delay) and in-band
registration (XEP-0077). Every step
checks what arrived, not only that no error came back.

Usage: im.py HOST STARTTLS_PORT DIRECT_TLS_PORT CA_FILE
The last step needs in-band registration on: `[modules.mod_register]` in the config.
"""
import asyncio
import ssl
import sys

import slixmpp
from common import TIMEOUT, expect, nothing, run

HOST, STARTTLS_PORT, DIRECT_PORT, CA = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
PLUGINS = ["xep_0030", "xep_0012", "xep_0054", "xep_0059", "xep_0092", "xep_0107", "xep_0115", "xep_0163",
           "xep_0191", "xep_0199", "xep_0203", "xep_0280", "xep_0313", "xep_0352"]


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, direct_tls):
        super().__init__(jid, "secret")
        self.ssl_context = ssl.create_default_context(cafile=CA)
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        for plugin in PLUGINS:
            self.register_plugin(plugin)
        self.started = asyncio.get_event_loop().create_future()
        self.messages = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.carbons = asyncio.Queue()
        self.moods = asyncio.Queue()
        self.add_event_handler("user_mood_publish", lambda m: self.moods.put_nowait(m))
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("message_error", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence_available", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("carbon_received", lambda m: self.carbons.put_nowait(("received", m)))
        self.add_event_handler("carbon_sent", lambda m: self.carbons.put_nowait(("sent", m)))

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        if not self.started.done():
            self.started.set_result(True)


async def until(condition, what):
    for _ in range(TIMEOUT * 10):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def login(jid, direct_tls=False):
    client = Client(jid, direct_tls)
    client.connect(HOST, DIRECT_PORT if direct_tls else STARTTLS_PORT)
    await asyncio.wait_for(client.started, TIMEOUT)
    return client


class Newcomer(slixmpp.ClientXMPP):
    """Registers its account in band (XEP-0077) before logging in with it."""

    def __init__(self, jid):
        super().__init__(jid, "fresh password")
        self.ssl_context = ssl.create_default_context(cafile=CA)
        self.enable_plaintext = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0077")
        self.plugin["xep_0077"].force_registration = True
        self.registered = asyncio.get_event_loop().create_future()
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("register", self.on_register)
        self.add_event_handler("session_start", lambda _: self.started.set_result(True))

    async def on_register(self, _):
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        await iq.send(timeout=TIMEOUT)
        self.registered.set_result(True)


async def main():
    alice = await login("alice@localhost/laptop")
    bob = await login("bob@localhost/phone", direct_tls=True)

    info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=TIMEOUT)
    features = set(info["disco_info"]["features"])
    for feature in ["urn:xmpp:carbons:2", "urn:xmpp:mam:2", "urn:xmpp:blocking", "vcard-temp", "jabber:iq:last"]:
        assert feature in features, (feature, features)
    version = await alice.plugin["xep_0092"].get_version("localhost", timeout=TIMEOUT)
    assert version["software_version"]["name"] == "Starling", version
    print(f"disco: {len(features)} server features; version: {version['software_version']['version']}")

    # Roster and subscriptions: slixmpp answers requests and subscribes back by itself.
    await alice.update_roster("bob@localhost", name="Bob", groups=["Friends"], timeout=TIMEOUT)
    alice.send_presence_subscription(pto="bob@localhost")
    await until(lambda: alice.client_roster["bob@localhost"]["subscription"] == "both"
                and bob.client_roster["alice@localhost"]["subscription"] == "both", "a mutual subscription")
    # A get without a version (slixmpp's own get_roster sends its cached one and, being
    # up to date, gets an empty result: XEP-0237).
    query = alice.make_iq_get()
    query.enable("roster")
    fresh = await query.send(timeout=TIMEOUT)
    items = {str(jid): item for jid, item in fresh["roster"]["items"].items()}
    assert "bob@localhost" in items, items
    item = items["bob@localhost"]
    assert item["name"] == "Bob" and item["groups"] == ["Friends"] and item["subscription"] == "both", item
    print("roster: item stored with name and group; subscription both ways")

    bob.send_presence(pstatus="ready")
    got = await expect(alice.presences, lambda p: p["status"] == "ready", "bob's broadcast presence")
    assert str(got["from"]) == "bob@localhost/phone", got
    print("presence: broadcast to the subscribed contact")

    # Personal eventing: slixmpp announces mood+notify in its caps (XEP-0115).
    await asyncio.sleep(0.5)
    await alice.plugin["xep_0107"].publish_mood("happy", text="sunny", timeout=TIMEOUT)
    event = await expect(bob.moods, lambda m: str(m["from"]) == "alice@localhost", "alice's mood event")
    assert event["pubsub_event"]["items"]["item"]["mood"]["value"] == "happy", event
    print("PEP: mood published by alice, event received by bob through +notify")

    vcard = alice.plugin["xep_0054"].make_vcard()
    vcard["FN"] = "Alice Example"
    await alice.plugin["xep_0054"].publish_vcard(vcard, timeout=TIMEOUT)
    card = await bob.plugin["xep_0054"].get_vcard("alice@localhost", cached=False, timeout=TIMEOUT)
    assert card["vcard_temp"]["FN"] == "Alice Example", card
    print("vCard: published by alice, read by bob")

    last = await bob.plugin["xep_0012"].get_last_activity("alice@localhost", timeout=TIMEOUT)
    assert last["last_activity"]["seconds"] == 0, last
    print("last activity: 0 s for an online contact")

    # Carbons: a second resource of alice sees both directions.
    desk = await login("alice@localhost/desk")
    await desk.plugin["xep_0280"].enable(timeout=TIMEOUT)
    bob.send_message(mto="alice@localhost/laptop", mbody="carbon in", mtype="chat")
    await expect(alice.messages, lambda m: m["body"] == "carbon in", "the direct message")
    kind, carbon = await expect(desk.carbons, lambda c: c[0] == "received", "a received carbon")
    assert carbon["carbon_received"]["body"] == "carbon in", carbon
    alice.send_message(mto="bob@localhost", mbody="carbon out", mtype="chat")
    kind, carbon = await expect(desk.carbons, lambda c: c[0] == "sent", "a sent carbon")
    assert carbon["carbon_sent"]["body"] == "carbon out", carbon
    print("carbons: received and sent copies on the second resource")

    # Client state indication: presence waits, messages do not.
    assert desk.plugin["xep_0352"].enabled, "CSI offered in the stream features"
    desk.plugin["xep_0352"].send_inactive()
    await asyncio.sleep(0.2)
    bob.send_presence(pstatus="while you idle")
    await nothing(desk.presences, lambda p: p["status"] == "while you idle")
    bob.send_message(mto="alice@localhost", mbody="wake up", mtype="chat")
    await expect(desk.messages, lambda m: m["body"] == "wake up", "a message while inactive")
    desk.plugin["xep_0352"].send_active()
    await expect(desk.presences, lambda p: p["status"] == "while you idle", "the held presence")
    print("CSI: presence held while inactive, message delivered at once")

    # Message archive, both parties.
    await asyncio.sleep(0.3)
    result = await alice.plugin["xep_0313"].retrieve(with_jid=slixmpp.JID("bob@localhost"), timeout=TIMEOUT)
    bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in result["mam"]["results"]]
    assert "carbon in" in bodies and "carbon out" in bodies and "wake up" in bodies, bodies
    pages = []
    async for page in alice.plugin["xep_0313"].iterate(with_jid=slixmpp.JID("bob@localhost"), rsm={"max": 2}):
        pages.append(page["mam_result"]["forwarded"]["stanza"]["body"])
        if len(pages) > 50:
            break
    assert pages == bodies, (pages, bodies)
    print(f"archive: {len(bodies)} messages with bob, same order paged by 2")

    # Blocking: carol's messages bounce while she is blocked.
    carol = await login("carol@localhost/c")
    await alice.plugin["xep_0191"].block("carol@localhost", timeout=TIMEOUT)
    blocked = await alice.plugin["xep_0191"].get_blocked_jids(timeout=TIMEOUT)
    assert slixmpp.JID("carol@localhost") in blocked, blocked
    carol.send_message(mto="alice@localhost/laptop", mbody="blocked?", mtype="chat")
    bounced = await expect(carol.messages, lambda m: m["type"] == "error", "the bounce")
    assert bounced["error"]["condition"] == "service-unavailable", bounced
    await nothing(alice.messages, lambda m: m["body"] == "blocked?")
    await alice.plugin["xep_0191"].unblock("carol@localhost", timeout=TIMEOUT)
    carol.send_message(mto="alice@localhost/laptop", mbody="unblocked", mtype="chat")
    await expect(alice.messages, lambda m: m["body"] == "unblocked", "a message after unblocking")
    print("blocking: bounced while blocked, delivered after unblocking")

    # Offline messages with a delay stamp.
    bob.disconnect()
    await asyncio.sleep(0.5)
    alice.send_message(mto="bob@localhost", mbody="see you later", mtype="chat")
    await asyncio.sleep(0.3)
    bob = await login("bob@localhost/phone", direct_tls=True)
    got = await expect(bob.messages, lambda m: m["body"] == "see you later", "the offline message")
    assert got["delay"]["stamp"] is not None, got
    print(f"offline: delivered at login with delay stamp {got['delay']['stamp']}")

    newcomer = Newcomer("newbie@localhost/n")
    newcomer.connect(HOST, STARTTLS_PORT)
    try:
        await asyncio.wait_for(asyncio.gather(newcomer.registered, newcomer.started), TIMEOUT)
    except asyncio.TimeoutError:
        raise SystemExit("registration: no in-band registration within the timeout; "
                         "the node needs [modules.mod_register] (off by default)")
    print(f"registration: {newcomer.boundjid.bare} created in band, then logged in")

    for client in (alice, bob, carol, desk, newcomer):
        client.disconnect()
    await asyncio.sleep(0.3)


if __name__ == "__main__":
    run(main, "IM")
