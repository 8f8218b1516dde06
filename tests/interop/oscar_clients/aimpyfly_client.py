"""
A scripted AIM user on aimpyfly 0.1.1 (Python 3.12): its own login, BOS sign-on and IM code.

Run by tests/interop/test_oscar.py as a subprocess; prints one JSON object per
line (ready, online, offline, im, done). aimpyfly has no presence API, so this
script adds handlers for 03/0B and 03/0C to its SNAC dispatch table. Roles as
in tw15_client.py: ``stay`` waits for the peer to leave, ``leave`` signs off.
"""

import argparse
import asyncio
import json
import logging
import os
import sys

sys.path.insert(0, os.environ["AIMPYFLY_DIR"])

from aimpyfly.aim_client import AIMClient  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int)
parser.add_argument("--user")
parser.add_argument("--password", default="secret")
parser.add_argument("--peer")
parser.add_argument("--send", action="append", default=[])
parser.add_argument("--expect", type=int, default=1)
parser.add_argument("--role", default="stay")
parser.add_argument("--timeout", type=float, default=40.0)
opts = parser.parse_args()


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def screen_name(data):
    return data[1:1 + data[0]].decode("utf-8", errors="replace")


class Client(AIMClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peer_online = asyncio.Event()
        self.peer_offline = asyncio.Event()
        self.got = asyncio.Event()
        self.received = 0

    def get_snac_handler(self, family_id, subtype_id):
        extra = {(0x0003, 0x000B): self.on_arrival, (0x0003, 0x000C): self.on_departure}
        return extra.get((family_id, subtype_id)) or super().get_snac_handler(family_id, subtype_id)

    async def on_arrival(self, data, flags, request_id):
        who = screen_name(data)
        emit("online", who=who)
        if who == opts.peer:
            self.peer_online.set()

    async def on_departure(self, data, flags, request_id):
        who = screen_name(data)
        emit("offline", who=who)
        if who == opts.peer:
            self.peer_offline.set()

    async def on_message(self, sender, message):
        emit("im", sender=sender, text=message)
        self.received += 1
        if self.received >= opts.expect:
            self.got.set()


async def run():
    client = Client(opts.host, opts.port, opts.user, opts.password, loglevel=logging.CRITICAL)
    client.set_message_callback(client.on_message)
    await client.connect()
    if not client.auth_cookie:
        emit("login-error")
        return 1
    emit("ready")
    reader = asyncio.create_task(client.process_incoming_packets())
    await client.peer_online.wait()
    for text in opts.send:
        await client.send_message(opts.peer, text)
        emit("sent", text=text)
    await client.got.wait()
    if opts.role == "leave":
        await asyncio.sleep(1.0)
        emit("leaving")
        client.writer.close()
    else:
        await client.peer_offline.wait()
    reader.cancel()
    return 0


def main():
    try:
        code = asyncio.run(asyncio.wait_for(run(), opts.timeout))
    except asyncio.TimeoutError:
        emit("timeout")
        code = 2
    emit("done", code=code)
    sys.stdout.flush()
    os._exit(code)  # aimpyfly may leave a busy reader behind; do not wait for it


if __name__ == "__main__":
    main()
