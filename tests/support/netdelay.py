"""A TCP proxy on loopback that holds every chunk for a while: a database as far as a network.

Each chunk read from one side is forwarded to the other after ``delay`` seconds, in both
directions, so every round trip of the database's protocol (each statement, each commit)
costs at least twice that: what a server pays when its database is on another machine.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class DelayProxy:
    """Listens on a free 127.0.0.1 port and relays connections to ``target`` with a delay."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="delay-proxy", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # shut down
            if self._closed:
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pumps = [
                threading.Thread(target=self._pump, args=pair, daemon=True)
                for pair in ((client, upstream), (upstream, client))
            ]
            with self._lock:
                self._sockets += [client, upstream]
                self._pumps += pumps
            for pump in pumps:
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                time.sleep(self.delay)  # the latency being simulated, not a wait for a condition
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop listening and cut every relayed connection, its threads ended first.

        A socket closed while another thread is blocked in it frees its descriptor number
        at once, and the next socket the process opens gets that number: the blocked thread
        would then read from, or accept on, somebody else's socket. So every blocked call is
        woken by a shutdown, its thread joined, and only then is the socket closed.
        """
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout=10)
        with self._lock:
            sockets, pumps = list(self._sockets), list(self._pumps)
            self._sockets.clear()
            self._pumps.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pump in pumps:
            pump.join(timeout=10)
        for sock in [self._listener, *sockets]:
            sock.close()
