"""bob's side of the poezio test: waits for alice's message, then answers it.

Usage: poezio_peer.py HOST PORT CA --expect TEXT --reply TEXT
"""
import argparse
import asyncio
import ssl

import slixmpp
from common import TIMEOUT, expect, run

parser = argparse.ArgumentParser()
parser.add_argument("host")
parser.add_argument("port", type=int)
parser.add_argument("ca")
parser.add_argument("--reply", required=True)
parser.add_argument("--expect", required=True)
ARGS = parser.parse_args()


class Bob(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__("bob@localhost/peer", "secret")
        self.ssl_context = ssl.create_default_context(cafile=ARGS.ca)
        self.enable_plaintext = False
        self.started = asyncio.get_event_loop().create_future()
        self.messages = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))

    async def on_start(self, _):
        self.send_presence()
        self.started.set_result(True)


async def main():
    bob = Bob()
    bob.connect(ARGS.host, ARGS.port)
    await asyncio.wait_for(bob.started, TIMEOUT)
    got = await expect(bob.messages, lambda m: m["body"] == ARGS.expect, "poezio's message", seconds=30)
    assert str(got["from"]).startswith("alice@localhost/"), got["from"]
    bob.send_message(mto=got["from"], mbody=ARGS.reply, mtype="chat")
    await asyncio.sleep(1)
    bob.disconnect()


if __name__ == "__main__":
    run(main, "poezio peer")
