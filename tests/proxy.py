"""A TCP proxy in front of the test web server that can misbehave on purpose.

Clients connect to ``proxy.url``; bytes are relayed to the server unchanged until a test says
otherwise: ``cut()`` drops every open connection (a network blip mid-stream),
``drop_responses(n)`` relays the next ``n`` new connections' requests but drops the connection
instead of answering (the request took effect, the client never heard), ``refuse(n)`` answers
the first request of the next ``n`` new connections itself with ``503`` without relaying it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class FaultyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._drop = 0
        self._refuse = 0
        self.connections = 0
        self.dropped = 0
        self.refused = 0
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop_responses(self, n: int = 1) -> None:
        with self._lock:
            self._drop = n

    def refuse(self, n: int = 1) -> None:
        with self._lock:
            self._refuse = n

    def cut(self) -> int:
        """Close every open connection, both sides; answer how many client connections there were."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        return len(sockets) // 2

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    # --- relaying --------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="proxy-conn", daemon=True).start()

    def _take(self, kind: str) -> bool:
        with self._lock:
            if kind == "refuse" and self._refuse:
                self._refuse -= 1
                self.refused += 1
                return True
            if kind == "drop" and self._drop:
                self._drop -= 1
                self.dropped += 1
                return True
        return False

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        first = self._recv(client)
        if not first:
            client.close()
            return
        if self._take("refuse"):
            with contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n"
                               b"Connection: close\r\n\r\n")
            client.close()
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        upstream.sendall(first)
        if self._take("drop"):
            # The server gets the whole request and answers; the client never hears the answer.
            threading.Thread(target=self._pump, args=(client, upstream), name="proxy-up", daemon=True).start()
            with contextlib.suppress(OSError):
                upstream.recv(65536)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client), name="proxy-down", daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            data = self._recv(source)
            if not data:
                break
            try:
                target.sendall(data)
            except OSError:
                break
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._open.discard(source)
            self._open.discard(target)


@contextlib.contextmanager
def faulty_proxy(upstream_port: int) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()
