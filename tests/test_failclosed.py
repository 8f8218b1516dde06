"""fail_closed through the whole path while a real PostgreSQL server stops and restarts."""

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from gateway.storage import db
from gateway.storage.archive.spool import Spool
from gateway.storage.archive.store import ArchiveStore
from gateway.storage.archive.writer import HEALTHY, ArchiveWriter
from gateway.model import Address
from gateway.testing import MemoryConnector, MemoryDirectory, make_core
from tests.test_archive_writer import PrivatePostgres, rows_by_id, sleep, wait_for


class FailClosedOutageTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_nothing_lost_nothing_duplicated(self):
        server = PrivatePostgres()
        self.addCleanup(server.destroy)
        yield threads.deferToThread(server.start)
        engine = db.create_engine(server.url)
        self.addCleanup(engine.dispose)
        db.migrate(engine)
        writer = ArchiveWriter(ArchiveStore(engine), reactor, Spool(self.mktemp()), batch_size=20, retry_interval=0.1)
        writer.startService()
        self.addCleanup(lambda: writer.running and writer.stopService())

        directory = MemoryDirectory()
        alice = directory.add("alice", "mem:alice")
        bob = directory.add("bob", "mem:bob")
        core = make_core("[archive]\nfail_closed = true\n", clock=reactor, directory=directory, archive=writer)
        connector = MemoryConnector(core.api)
        core.connectors["memory"] = connector
        yield connector.login(alice, Address.parse("mem:alice"))
        b = yield connector.login(bob, Address.parse("mem:bob"))

        sent = []  # (event, Deferred outcome)

        def send(count):
            for _ in range(count):
                event = core.api.message("mem:alice", "mem:bob", f"message {len(sent)}")
                sent.append((event, core.bus.submit(event)))

        @defer.inlineCallbacks
        def send_until(d):
            while not d.called:
                send(2)
                yield sleep(0.01)
            yield d

        send(40)
        yield send_until(threads.deferToThread(server.stop))
        for _ in range(10):
            send(4)
            yield sleep(0.01)
        yield send_until(threads.deferToThread(server.start))
        yield wait_for(lambda: writer.state == HEALTHY and writer.spooled() == 0 and writer.queue_depth() == 0)
        send(20)
        outcomes = yield defer.gatherResults([d for _, d in sent])
        yield writer.stopService()

        delivered = [o.event_id for o in outcomes if o.delivered]
        refused = [o.event_id for o in outcomes if o.rejected]
        self.assertEqual(len(delivered) + len(refused), len(sent))
        self.assertTrue(delivered and refused, "the outage should have refused some and passed others")
        self.assertEqual({o.code for o in outcomes if o.rejected}, {"archive-unavailable"})
        # Only what the archive confirmed reached bob, each once.
        self.assertEqual([e.id for e in connector.received(b, "im")], delivered)
        rows, count = rows_by_id(engine)
        im_rows = {i: r for i, r in rows.items() if r.kind == "im"}
        self.assertEqual(set(im_rows), {e.id for e, _ in sent})
        for event_id in delivered:
            self.assertEqual(im_rows[event_id].status, "accepted")
        for event_id in refused:
            self.assertEqual((im_rows[event_id].status, im_rows[event_id].code), ("rejected", "archive-unavailable"))
