"""One worker thread that runs database calls in order and answers on the reactor."""

import queue
import threading

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_STOP = object()


class DatabaseThread:
    """
    Run blocking callables one at a time in a dedicated thread.

    ``call(fn, *args)`` returns a Deferred fired in the reactor thread with
    the result (or the failure). Calls run in submission order, so a read
    after a write sees it. ``reactor`` must provide ``callFromThread``.
    """

    def __init__(self, reactor, name="gateway-db", maxsize=0):
        self._reactor = reactor
        self._name = name
        self._queue = queue.Queue(maxsize)
        self._thread = None

    @property
    def running(self):
        return self._thread is not None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=self._name, daemon=True
            )
            self._thread.start()

    def stop(self):
        """Finish the calls already queued, then end the thread; a Deferred."""
        if self._thread is None:
            d = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        self._queue.put((_STOP, (), {}, d))
        self._thread = None
        return d

    def call(self, fn, *args, **kwargs):
        d = Deferred()
        if self._thread is None:
            d.errback(RuntimeError(f"{self._name} is not running"))
            return d
        self._queue.put((fn, args, kwargs, d))
        return d

    def _run(self):
        while True:
            fn, args, kwargs, d = self._queue.get()
            if fn is _STOP:
                self._reactor.callFromThread(d.callback, None)
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                result = Failure()
                self._reactor.callFromThread(d.errback, result)
            else:
                self._reactor.callFromThread(d.callback, result)
