"""Black-box test: real slixmpp clients against a running Starling node.

alice logs in with SCRAM-SHA-256 over STARTTLS, bob over direct TLS (XEP-0368); both
verify the server certificate against the node's generated CA. They exchange
messages, directed presence and pings. Exits 0 when everything arrived as expected.

Usage: chat.py HOST STARTTLS_PORT DIRECT_TLS_PORT CA_FILE
"""
import asyncio
import inspect
import os
import ssl
import sys

import slixmpp
from common import TIMEOUT, expect, run

HOST, STARTTLS_PORT, DIRECT_PORT, CA = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, direct_tls, mechanism=None):
        super().__init__(jid, password, sasl_mech=mechanism)
        self.ssl_context = ssl.create_default_context(cafile=CA)
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.register_plugin("xep_0199")
        self.started = asyncio.get_event_loop().create_future()
        self.messages = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.mechanism_used = None
        self.add_event_handler("session_start", self.on_start)
        # failed_auth fires for each mechanism tried; no_auth once none is left.
        self.add_event_handler("no_auth", self.on_failed)
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("auth_success", self.on_auth)

    def connect_to(self, host, port):
        """Connects the way this slixmpp version spells it (1.8 took an address
        tuple and use_ssl; 1.9+ takes host, port and enable_direct_tls)."""
        if "use_ssl" in inspect.signature(self.connect).parameters:
            self.connect((host, port), use_ssl=self.enable_direct_tls, force_starttls=not self.enable_direct_tls)
        else:
            self.connect(host, port)

    def on_auth(self, _):
        self.mechanism_used = self.plugin["feature_mechanisms"].mech.name if self.plugin["feature_mechanisms"].mech else None

    async def on_start(self, _):
        self.send_presence()
        if not self.started.done():
            self.started.set_result(True)

    def on_failed(self, _):
        if not self.started.done():
            self.started.set_exception(RuntimeError(f"authentication failed for {self.boundjid}"))


# With Debian's slixmpp 1.8.3 both clients pick their mechanism themselves, as poezio
# does: SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS with tls-unique (which a TLS 1.3
# server cannot offer) first, then SCRAM-SHA-256 with the gs2 flag y.
DEBIAN = os.environ.get("DEBIAN_SLIXMPP") == "1"


async def main():
    print(f"slixmpp {slixmpp.__version__}")
    alice = Client("alice@localhost/laptop", "secret", direct_tls=False, mechanism=None if DEBIAN else "SCRAM-SHA-256")
    bob = Client("bob@localhost/phone", "secret", direct_tls=True)
    alice.connect_to(HOST, STARTTLS_PORT)
    bob.connect_to(HOST, DIRECT_PORT)
    await asyncio.wait_for(asyncio.gather(alice.started, bob.started), TIMEOUT)
    assert DEBIAN or alice.mechanism_used == "SCRAM-SHA-256", alice.mechanism_used
    print(f"logged in: {alice.boundjid} ({alice.mechanism_used}, STARTTLS), {bob.boundjid} ({bob.mechanism_used}, direct TLS)")

    alice.send_message(mto="bob@localhost", mbody="hello bob", mtype="chat")
    got = await expect(bob.messages, lambda m: m["body"] == "hello bob", "alice's message")
    assert str(got["from"]) == "alice@localhost/laptop", got["from"]
    bob.send_message(mto=got["from"], mbody="hello alice", mtype="chat")
    got = await expect(alice.messages, lambda m: m["body"] == "hello alice", "bob's reply")
    assert str(got["from"]) == "bob@localhost/phone", got["from"]
    print("messages: delivered both ways")

    alice.send_presence(pto="bob@localhost", pstatus="in a meeting", pshow="dnd")
    got = await expect(bob.presences, lambda p: p["status"] == "in a meeting", "alice's directed presence")
    assert got["show"] == "dnd" and str(got["from"]) == "alice@localhost/laptop", got
    bob.send_presence(pto="alice@localhost/laptop", pstatus="free")
    await expect(alice.presences, lambda p: p["status"] == "free", "bob's directed presence")
    print("directed presence: delivered both ways")

    for client in (alice, bob):
        rtt = await client.plugin["xep_0199"].ping("localhost", timeout=TIMEOUT)
        print(f"ping from {client.boundjid.bare}: {rtt * 1000:.1f} ms")
    rtt = await alice.plugin["xep_0199"].ping("bob@localhost/phone", timeout=TIMEOUT)
    print(f"client-to-client ping: {rtt * 1000:.1f} ms")

    alice.disconnect()
    got = await expect(bob.presences, lambda p: p["type"] == "unavailable", "alice's unavailable presence")
    assert str(got["from"]) == "alice@localhost/laptop", got
    print("unavailable presence on disconnect: delivered")
    bob.disconnect()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    run(main, "chat")
