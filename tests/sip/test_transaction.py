"""Transactions (RFC 3261 section 17) on a task.Clock: Timers E, F, K, J, G, H, I and retransmission matching."""

from twisted.internet import task
from twisted.trial import unittest

from gateway_sip.codec import Request, Response, parse_message
from gateway_sip.transaction import ClientTransaction, Deadlines, RandomHex, TransactionLayer, TransactionTimeout, TransportGone


class FakeFlow:
    transport_name = "UDP"

    def __init__(self, reliable=False, key=("fake", 1)):
        self.reliable = reliable
        self.key = key
        self.peer = ("127.0.0.1", 5070)
        self.sent = []
        self.alive = True

    def send(self, data):
        if not self.alive:
            raise TransportGone("closed")
        self.sent.append(data)

    def local(self):
        return ("127.0.0.1", 5060)


def request(method="MESSAGE", branch="z9hG4bKabc", cseq=1):
    return parse_message(
        f"{method} sip:bob@localhost SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
        "From: <sip:alice@localhost>;tag=a\r\nTo: <sip:bob@localhost>\r\n"
        f"Call-ID: c1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n".encode()
    )


def response_to(req, status):
    response = Response(status)
    for name in ("via", "from", "to", "call-id", "cseq"):
        response.headers.add(name, req.headers.get(name))
    return response


class ClientTransactionTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.layer = TransactionLayer(self.clock)

    def send_times(self, flow, until):
        """Clock times at which the request went out, up to ``until`` seconds."""
        times, seen = [], 0
        step = 0.25
        while self.clock.seconds() <= until:
            if len(flow.sent) > seen:
                times.extend([self.clock.seconds()] * (len(flow.sent) - seen))
                seen = len(flow.sent)
            self.clock.advance(step)
        return times

    def test_timer_e_doubles_to_t2_and_timer_f_times_out(self):
        flow = FakeFlow()
        failures = []
        self.layer.request(request(), flow).addErrback(failures.append)
        times = self.send_times(flow, 40)
        self.assertEqual(times, [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(len(failures), 1)
        failures[0].trap(TransactionTimeout)
        self.assertEqual(self.layer.client, {})

    def test_provisional_then_final_and_timer_k(self):
        flow = FakeFlow()
        results = []
        req = request()
        self.layer.request(req, flow).addCallback(results.append)
        self.clock.advance(0.5)
        self.assertTrue(self.layer.receive_response(response_to(req, 100)))
        self.clock.advance(1.0)
        self.assertEqual(len(flow.sent), 3)  # Timer E still runs in Proceeding...
        self.clock.advance(3.9)
        self.assertEqual(len(flow.sent), 3)  # ...now every T2
        self.clock.advance(0.1)
        self.assertEqual(len(flow.sent), 4)
        self.assertTrue(self.layer.receive_response(response_to(req, 200)))
        self.assertEqual([r.status for r in results], [200])
        self.assertTrue(self.layer.receive_response(response_to(req, 200)))  # absorbed in Completed
        self.assertEqual(len(results), 1)
        self.clock.advance(5.0)  # Timer K = T4
        self.assertFalse(self.layer.receive_response(response_to(req, 200)))
        self.clock.advance(60)
        self.assertEqual(len(flow.sent), 4)

    def test_reliable_flow_never_retransmits(self):
        flow = FakeFlow(reliable=True)
        failures = []
        self.layer.request(request(), flow).addErrback(failures.append)
        self.clock.advance(31.9)
        self.assertEqual((len(flow.sent), failures), (1, []))
        self.clock.advance(0.1)
        failures[0].trap(TransactionTimeout)

    def test_flow_lost(self):
        flow = FakeFlow(reliable=True)
        failures = []
        self.layer.request(request(), flow).addErrback(failures.append)
        self.layer.flow_lost(flow)
        failures[0].trap(TransportGone)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed_flow_fails_at_once(self):
        flow = FakeFlow()
        flow.alive = False
        failures = []
        self.layer.request(request(), flow).addErrback(failures.append)
        failures[0].trap(TransportGone)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_response_for_another_method_or_branch_does_not_match(self):
        req = request()
        self.layer.request(req, FakeFlow())
        other = response_to(req, 200)
        other.headers.set("cseq", "1 OPTIONS")
        self.assertFalse(self.layer.receive_response(other))
        self.assertFalse(self.layer.receive_response(response_to(request(branch="z9hG4bKzzz"), 200)))


class ServerTransactionTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.layer = TransactionLayer(self.clock)

    def test_retransmissions_absorbed_then_answered_then_timer_j(self):
        flow = FakeFlow()
        transaction = self.layer.receive_request(request(), flow)
        self.assertIsNotNone(transaction)
        self.assertIsNone(self.layer.receive_request(request(), flow))  # Trying: nothing to send yet
        self.assertEqual(flow.sent, [])
        transaction.respond(response_to(request(), 200))
        self.assertIsNone(self.layer.receive_request(request(), flow))
        self.assertEqual(len(flow.sent), 2)
        self.assertEqual(flow.sent[0], flow.sent[1])
        self.clock.advance(31.9)
        self.assertIsNone(self.layer.receive_request(request(), flow))
        self.clock.advance(0.1)  # Timer J = 64*T1
        self.assertIsNotNone(self.layer.receive_request(request(), flow))

    def test_reliable_forgets_at_once(self):
        flow = FakeFlow(reliable=True)
        self.layer.receive_request(request(), flow).respond(response_to(request(), 200))
        self.assertEqual(self.layer.server, {})

    def test_distinct_branches_and_methods_are_distinct(self):
        flow = FakeFlow()
        self.assertIsNotNone(self.layer.receive_request(request(), flow))
        self.assertIsNotNone(self.layer.receive_request(request(branch="z9hG4bKother"), flow))
        self.assertIsNotNone(self.layer.receive_request(request(method="OPTIONS"), flow))

    def test_rfc2543_request_without_magic_cookie(self):
        flow = FakeFlow()
        self.assertIsNotNone(self.layer.receive_request(request(branch="old1"), flow))
        self.assertIsNone(self.layer.receive_request(request(branch="old1"), flow))
        self.assertIsNotNone(self.layer.receive_request(request(branch="old1", cseq=2), flow))

    def test_refused_invite_timer_g_until_ack(self):
        flow = FakeFlow()
        invite = request("INVITE")
        self.layer.receive_request(invite, flow).respond(response_to(invite, 405))
        self.clock.pump([0.5, 1.0, 2.0])
        self.assertEqual(len(flow.sent), 4)  # Timer G: 0.5, 1, 2 after
        ack = request("ACK")
        self.assertIsNone(self.layer.receive_request(ack, flow))
        self.clock.advance(10)
        self.assertEqual(len(flow.sent), 4)
        self.assertEqual(self.layer.server, {})  # Timer I (T4) ended it

    def test_refused_invite_timer_h(self):
        flow = FakeFlow()
        invite = request("INVITE")
        self.layer.receive_request(invite, flow).respond(response_to(invite, 405))
        self.clock.pump([1] * 40)
        self.assertEqual(self.layer.server, {})
        sent = len(flow.sent)
        self.clock.advance(10)
        self.assertEqual(len(flow.sent), sent)

    def test_stray_ack_is_absorbed(self):
        self.assertIsNone(self.layer.receive_request(request("ACK"), FakeFlow()))

    def test_stop_cancels_everything(self):
        flow = FakeFlow()
        failures = []
        self.layer.request(request(branch="z9hG4bKc"), flow).addErrback(failures.append)
        self.layer.receive_request(request(), flow).respond(response_to(request(), 200))
        self.layer.stop()
        failures[0].trap(TransportGone)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsInstance(request(), Request)


class DeadlinesTests(unittest.TestCase):
    def test_each_key_is_due_its_delay_after_it_was_added_on_one_clock_call(self):
        clock = task.Clock()
        fired = []
        deadlines = Deadlines(clock, 10, lambda key: fired.append((key, clock.seconds())))
        deadlines.add("a")
        clock.advance(3)
        deadlines.add("b")
        deadlines.add("c")
        clock.advance(1)
        deadlines.add("d")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        deadlines.discard("c")
        clock.pump([1] * 20)
        self.assertEqual(fired, [("a", 10), ("b", 13), ("d", 14)])
        self.assertEqual((len(deadlines), clock.getDelayedCalls()), (0, []))

    def test_keys_added_by_a_callback_wait_their_turn_on_the_one_clock_call(self):
        clock = task.Clock()
        fired = []

        def due(key):
            fired.append((key, clock.seconds()))
            if key == "a":
                deadlines.add("c")  # from within a callback

        deadlines = Deadlines(clock, 10, due)
        deadlines.add("a")
        clock.advance(5)
        deadlines.add("b")
        clock.advance(5)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.pump([5] * 4)
        self.assertEqual(fired, [("a", 10), ("b", 15), ("c", 20)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_discarding_the_last_leaves_the_clock_empty(self):
        clock = task.Clock()
        deadlines = Deadlines(clock, 5, lambda key: self.fail("nothing is due"))
        deadlines.add(1)
        deadlines.discard(1)
        deadlines.discard(2)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)


class FootprintTests(unittest.TestCase):
    """Over UDP answered transactions live on (Timers J and K): they must keep little."""

    def setUp(self):
        self.clock = task.Clock()
        self.layer = TransactionLayer(self.clock)

    def test_answered_server_transactions_let_go_of_the_request_and_share_one_timer(self):
        flow = FakeFlow()
        transactions = []
        for i in range(3):
            req = request(branch=f"z9hG4bKs{i}")
            transaction = self.layer.receive_request(req, flow)
            transaction.respond(response_to(req, 200))
            transactions.append(transaction)
            self.clock.advance(10)
        self.assertEqual([t.request for t in transactions], [None, None, None])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIsNone(self.layer.receive_request(request(branch="z9hG4bKs0"), flow))  # answered again
        self.assertEqual(len(flow.sent), 4)
        self.clock.advance(2)  # 32 s after the first answer
        self.assertEqual(len(self.layer.server), 2)
        self.clock.advance(20)
        self.assertEqual((self.layer.server, self.clock.getDelayedCalls()), ({}, []))

    def test_answered_client_transaction_keeps_only_its_key(self):
        flow = FakeFlow()
        results = []
        req = request()
        self.layer.request(req, flow).addCallback(results.append)
        self.assertTrue(self.layer.receive_response(response_to(req, 200)))
        [kept] = self.layer.client.values()
        self.assertNotIsInstance(kept, ClientTransaction)  # a marker, not the transaction
        self.assertFalse(hasattr(kept, "deferred"))
        self.assertTrue(self.layer.receive_response(response_to(req, 200)))  # a copy: absorbed
        self.assertEqual(len(results), 1)
        self.clock.advance(5)
        self.assertEqual((self.layer.client, self.clock.getDelayedCalls()), ({}, []))

    def test_random_hex_is_fresh_and_sized(self):
        random = RandomHex(size=16)
        values = [random.take(6) for _ in range(10)]
        self.assertEqual({len(v) for v in values}, {12})
        self.assertEqual(len(set(values)), 10)
        self.assertEqual(len(random.take(40)), 80)  # more than the pool holds at once
        self.assertTrue(self.layer.new_branch().startswith("z9hG4bK"))
