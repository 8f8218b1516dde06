"""
The bench load client: C connections in pairs, each sending frames to its partner.

    python bench/load.py --port P [--connections 100] [--window 16] [--seconds 5 | --messages N]
    python bench/load.py --port P --rate 5000 --seconds 5        # latency at a fixed offered load
    python bench/load.py --port P --connections 2000 --hold      # log in, then wait (memory)

Connection I registers with a first frame carrying I and waits for the
server's ACK; once every connection is registered (at most ``--connect-batch``
connecting at once), the load starts. Connection I sends to I^1.

Throughput mode keeps ``--window`` messages in flight per connection: each
frame a connection receives gives its partner (the only one sending to it)
the credit for one more. Sending stops after ``--seconds`` (or once
``--messages`` were sent), then the client waits for every message in
flight. Rate mode offers ``--rate`` messages per second in total, round-robin
over the connections, each stamped with its send time; messages sent in the
first ``--warmup`` seconds are not counted in the latency figures.

Prints one JSON object on stdout: sent, received, elapsed, rate and, in
rate mode, latency percentiles in ms. Hold mode prints
``{"event": "held"}`` once all are logged in, then the result once a line
(or the end) of stdin arrives.
"""

import argparse
import json
import sys
import time

from common import (
    ACK,
    ERROR,
    HEADER,
    MAX_BODY,
    PAYLOAD_SIZE,
    STAMP_DIGITS,
    StdinWatch,
    cpu_seconds,
    filler,
    frame,
    percentile,
    raise_fd_limit,
    stamped_payload,
)

from twisted.internet import protocol
from twisted.internet.task import LoopingCall

_unpack = HEADER.unpack_from
_now_ns = time.perf_counter_ns


class Client(protocol.Protocol):
    def __init__(self, load, index):
        self.load = load
        self.index = index
        self.partner = None  # the partner Client, once it is connected
        self.registered = False
        self.quota = 0  # messages this connection may still send (throughput mode)
        self.sent = 0
        self.received = 0
        self._buffer = b""
        # Throughput frames are all alike: built once.
        self.message = frame(index ^ 1, filler(load.size))

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.transport.write(frame(self.index))

    def dataReceived(self, data):
        if self._buffer:
            data = self._buffer + data
        end = len(data)
        offset = 0
        count = 0
        load = self.load
        stamps = load.latencies if load.rate else None
        while end - offset >= 8:
            (length,) = _unpack(data, offset)
            stop = offset + 4 + length
            if stop > end:
                break
            if length > MAX_BODY or length < 4:
                load.fail(f"connection {self.index}: bad frame of {length} bytes")
                return
            if length == 4 + load.size:
                count += 1
                if stamps is not None:
                    sent = int(data[offset + 8 : offset + 8 + STAMP_DIGITS])
                    if sent >= load.record_after:
                        stamps.append(_now_ns() - sent)
            else:
                (index,) = _unpack(data, offset + 4)
                if index == ACK and not self.registered:
                    self.registered = True
                    load.registered(self)
                elif index == ERROR:
                    reason = data[offset + 8 : stop].decode("utf-8", "replace")
                    load.fail(f"connection {self.index} refused: {reason}")
                    return
                else:
                    load.fail(f"connection {self.index}: unexpected frame of {length} bytes")
                    return
            offset = stop
        self._buffer = data[offset:] if offset < end else b""
        if count:
            self.received += count
            load.received += count
            load.last_received = _now_ns()
            if load.window:
                partner = self.partner
                if load.sending:
                    partner.send(count)
                elif load.received == load.sent:
                    load.done()

    def send(self, n):
        """Throughput mode: send up to ``n`` more messages to the partner."""
        n = min(n, self.quota)
        if n > 0:
            self.quota -= n
            self.sent += n
            self.load.sent += n
            self.transport.write(self.message * n)
            if self.load.budget is not None and self.quota == 0:
                self.load.quota_spent()

    def connectionLost(self, reason):
        self.load.lost(self)


class Load:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.size = args.size
        self.rate = args.rate
        self.window = 0 if args.rate or args.hold else args.window
        self.budget = args.messages
        self.clients = [None] * args.connections
        self.connected = 0
        self.ready = 0
        self.next_index = 0
        self.sending = False
        self.finished = False
        self.sent = self.received = 0
        self.latencies = []
        self.record_after = 0
        self.errors = []
        self.spent = 0
        self.last_received = 0

    # -- connecting ------------------------------------------------------

    def start(self):
        self.connect_started = time.monotonic()
        for _ in range(min(self.args.connect_batch, len(self.clients))):
            self.connect_next()
        self.reactor.callLater(self.args.timeout, self.timed_out, "connecting")

    def connect_next(self):
        if self.next_index >= len(self.clients):
            return
        index = self.next_index
        self.next_index += 1
        factory = protocol.ClientFactory()
        factory.protocol = lambda: self._made(index)
        factory.clientConnectionFailed = lambda connector, reason: self.fail(
            f"connection {index} failed: {reason.getErrorMessage()}"
        )
        self.reactor.connectTCP("127.0.0.1", self.port_of(index), factory, timeout=30)

    def port_of(self, index):
        """Which server connection ``index`` logs in to: with ``--ports``, partners on two nodes or on one."""
        ports = self.args.ports
        if not ports:
            return self.args.port
        if self.args.placement == "cross":
            return ports[index % len(ports)]  # I and I^1 on different nodes
        return ports[(index // 2) % len(ports)]  # I and I^1 on the same node

    def _made(self, index):
        client = self.clients[index] = Client(self, index)
        partner = self.clients[index ^ 1] if (index ^ 1) < len(self.clients) else None
        if partner is not None:
            client.partner, partner.partner = partner, client
        return client

    def registered(self, client):
        self.ready += 1
        self.connect_next()
        if self.ready == len(self.clients):
            self.connect_seconds = time.monotonic() - self.connect_started
            self.begin()

    # -- the load --------------------------------------------------------

    def begin(self):
        if self.args.hold:
            say(event="held", connections=self.ready, connect_seconds=round(self.connect_seconds, 3))
            return
        self.started_ns = _now_ns()
        self.cpu_at_start = cpu_seconds()
        self.sending = True
        if self.args.seconds:
            self.reactor.callLater(self.args.seconds, self.stop_sending)
        if self.rate:
            self.record_after = self.started_ns + int(self.args.warmup * 1e9)
            self.cursor = 0
            self.ticker = LoopingCall(self.tick)
            self.ticker.start(self.args.tick, now=True)
            return
        per_client = None
        if self.budget is not None:
            per_client, extra = divmod(self.budget, len(self.clients))
        for i, client in enumerate(self.clients):
            if per_client is None:
                client.quota = 1 << 62
            else:
                client.quota = per_client + (1 if i < extra else 0)
        for client in self.clients:
            client.send(self.window)
        if self.budget is not None and self.spent == len(self.clients):
            self.stop_sending()

    def tick(self):
        """Rate mode: send what is due by now, spread over the connections."""
        due = int((_now_ns() - self.started_ns) * self.rate / 1e9) - self.sent
        clients = self.clients
        n = len(clients)
        payload_size = self.size
        for _ in range(due):
            client = clients[self.cursor]
            self.cursor = (self.cursor + 1) % n
            client.transport.write(frame(client.index ^ 1, stamped_payload(_now_ns(), payload_size)))
            client.sent += 1
            self.sent += 1

    def quota_spent(self):
        self.spent += 1
        if self.spent == len(self.clients):
            self.stop_sending()

    def stop_sending(self):
        if not self.sending:
            return
        self.sending = False
        self.stopped_ns = _now_ns()
        self.received_by_stop = self.received
        if self.rate and self.ticker.running:
            self.ticker.stop()
        self.reactor.callLater(self.args.drain_timeout, self.timed_out, "waiting for messages in flight")
        if self.received == self.sent:
            self.done()
        elif self.rate:
            self._poll_done()

    def _poll_done(self):
        # Rate mode has no window to tell when the last message arrived.
        if self.received >= self.sent:
            self.done()
        elif not self.finished:
            self.reactor.callLater(0.01, self._poll_done)

    def timed_out(self, what):
        if self.finished:
            return
        if what == "connecting" and self.ready == len(self.clients):
            return
        self.errors.append(f"timed out {what} ({self.ready}/{len(self.clients)} logged in)")
        self.done()

    def done(self):
        if self.finished:
            return
        self.finished = True
        self.reactor.callLater(0.2, self.reactor.stop)
        for client in self.clients:
            if client is not None and client.transport is not None:
                client.transport.loseConnection()
        result = {
            "mode": "rate" if self.rate else ("hold" if self.args.hold else "window"),
            "connections": len(self.clients),
            "window": self.window,
            "size": self.size,
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
            # CPU this process spent from the first message sent on (not connecting).
            "cpu_seconds": round(cpu_seconds() - getattr(self, "cpu_at_start", 0.0), 3),
        }
        if getattr(self, "connect_seconds", None) is not None:
            result["connect_seconds"] = round(self.connect_seconds, 3)
        if getattr(self, "started_ns", None) is not None:
            end = max(self.last_received, getattr(self, "stopped_ns", 0)) or _now_ns()
            elapsed = (end - self.started_ns) / 1e9
            result["elapsed"] = round(elapsed, 4)
            result["rate"] = round(self.received / elapsed, 1) if elapsed > 0 else 0.0
            if getattr(self, "stopped_ns", None):
                send_seconds = (self.stopped_ns - self.started_ns) / 1e9
                result["send_seconds"] = round(send_seconds, 4)
                # What came back while sending: below the offered rate, the server fell behind.
                result["received_while_sending"] = self.received_by_stop
                if send_seconds > 0:
                    result["delivered_rate_while_sending"] = round(self.received_by_stop / send_seconds, 1)
        if self.rate:
            values = sorted(self.latencies)
            result["offered_rate"] = self.rate
            result["latency_ms"] = {
                "count": len(values),
                "p50": _ms(percentile(values, 0.50)),
                "p90": _ms(percentile(values, 0.90)),
                "p99": _ms(percentile(values, 0.99)),
                "p999": _ms(percentile(values, 0.999)),
                "max": _ms(values[-1] if values else None),
            }
        say(**result)

    def fail(self, message):
        if self.finished:
            return
        self.errors.append(message)
        self.done()

    def lost(self, client):
        if not self.finished and client.registered:
            self.fail(f"connection {client.index} closed by the server")


def _ms(ns):
    return None if ns is None else round(ns / 1e6, 4)


def say(**fields):
    try:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass  # the runner is gone; nobody to tell


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ports", type=lambda t: [int(p) for p in t.split(",")], default=[],
                        help="several servers (nodes of a cluster): P1,P2")
    parser.add_argument("--placement", choices=("cross", "same"), default="cross",
                        help="with --ports: partners on different nodes (cross) or on one (same)")
    parser.add_argument("--connections", type=int, default=100, help="an even number")
    parser.add_argument("--window", type=int, default=16, help="messages in flight per connection")
    parser.add_argument("--seconds", type=float, default=None, help="send for this long")
    parser.add_argument("--messages", type=int, default=None, help="send this many in all")
    parser.add_argument("--rate", type=float, default=0.0, help="offered msg/s in all (latency mode)")
    parser.add_argument("--warmup", type=float, default=0.5, help="rate mode: seconds not counted")
    parser.add_argument("--tick", type=float, default=0.001, help="rate mode: send interval (s)")
    parser.add_argument("--size", type=int, default=PAYLOAD_SIZE, help="payload bytes")
    parser.add_argument("--hold", action="store_true", help="log in, report, wait for stdin")
    parser.add_argument("--connect-batch", type=int, default=100, help="connections being set up at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to log everyone in")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to wait for messages in flight")
    args = parser.parse_args(argv)
    if args.connections < 2 or args.connections % 2:
        parser.error("--connections must be an even number of at least 2")
    if not args.port and not args.ports:
        parser.error("--port or --ports is needed")
    if args.size < STAMP_DIGITS:
        parser.error(f"--size must be at least {STAMP_DIGITS}")
    if not args.hold and args.seconds is None and args.messages is None:
        args.seconds = 5.0
    if args.rate and args.seconds is None:
        parser.error("--rate needs --seconds")
    raise_fd_limit()

    from twisted.internet import reactor

    load = Load(reactor, args)
    if args.hold:
        reactor.addReader(StdinWatch(on_line=lambda line: load.done(), on_end=load.done))
    reactor.callWhenRunning(load.start)
    reactor.run()
    return 0 if not load.errors else 1


if __name__ == "__main__":
    sys.exit(main())
