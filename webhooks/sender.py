"""One HTTP POST of one webhook attempt, with hard limits.

The host name is resolved here, once, every resolved address is checked against the callback
address policy (``governance.egress``), and the connection is made to the checked address
itself (the ``Host`` header and TLS SNI/certificate check carry the name), whose peer address
is checked again before a byte is sent — so the address that is checked is the address that is
connected to; a second lookup by an HTTP library could answer differently (DNS rebinding).
A forbidden target is not retried: the delivery is ``stopped``. Limits: ``WEBHOOK_CONNECT_TIMEOUT_S`` to connect,
``WEBHOOK_TIMEOUT_S`` for the whole exchange (a timer closes the socket at the deadline, so a
receiver trickling bytes cannot hold a worker longer), no redirect followed (a 3xx is an answer
like any other non-2xx), and only the first ``WEBHOOK_RESPONSE_SNIPPET_BYTES`` of the answer read.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from governance.egress import address_refusal, resolve

USER_AGENT = "jobplatform-webhooks/1"


@dataclass
class SendResult:
    http_status: int | None = None  # None: no HTTP answer (see ``error``)
    snippet: str = ""
    error: str = ""
    address: str = ""  # the address connected to
    forbidden: bool = False  # refused before any byte was sent: the target is not allowed


def post_json(
    *, url: str, body: bytes, headers: dict[str, str], connect_timeout: float, total_timeout: float,
    snippet_bytes: int,
) -> SendResult:
    """POST ``body`` to ``url``; never raises for network trouble (it is in the result)."""
    deadline = time.monotonic() + total_timeout
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        return SendResult(error="invalid port", forbidden=True)
    if parts.scheme not in {"http", "https"} or not host:
        return SendResult(error="not an http(s) URL", forbidden=True)
    try:
        addresses = resolve(host, port)
    except OSError as exc:
        return SendResult(error=f"cannot resolve {host}: {exc}"[:300])
    # The address policy (governance.egress), on what the name resolves to now: one forbidden
    # answer refuses the target, exactly as at submit.
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            return SendResult(error=f"forbidden address {address} ({reason})", address=address, forbidden=True)
    sock: socket.socket | None = None
    error = "no address"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = "timeout"
            break
        try:
            sock = socket.create_connection((address, port), timeout=min(connect_timeout, remaining))
            break
        except OSError as exc:
            error = f"connect to {address}: {exc}"
    if sock is None:
        return SendResult(error=error[:300])
    peer = str(sock.getpeername()[0])
    reason = address_refusal(peer)
    if reason is not None:  # the address actually connected to, checked again before any byte goes
        _close_quietly(sock)
        return SendResult(error=f"forbidden address {peer} ({reason})", address=peer, forbidden=True)
    # The hard deadline: whatever phase the exchange is in, the socket closes under it. (TLS
    # wrapping detaches the plain socket, so the timer closes whichever is current.)
    current = {"sock": sock}
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), lambda: _close_quietly(current["sock"]))
    timer.daemon = True
    timer.start()
    try:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        if https:
            sock = current["sock"] = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=max(0.01, deadline - time.monotonic()))
        conn.sock = sock
        default_port = 443 if https else 80
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header = f"{host_header}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers={
            "Host": host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "Connection": "close", **headers,
        })
        response = conn.getresponse()
        snippet = response.read(snippet_bytes) if snippet_bytes else b""
        return SendResult(http_status=response.status, snippet=snippet.decode("utf-8", errors="replace"),
                          address=peer)
    except TimeoutError:
        return SendResult(error="timeout", address=peer)
    except ssl.SSLError as exc:
        return SendResult(error=f"tls: {exc}"[:300], address=peer)
    except (OSError, http.client.HTTPException) as exc:
        late = time.monotonic() >= deadline
        return SendResult(error="timeout" if late else f"{type(exc).__name__}: {exc}"[:300], address=peer)
    finally:
        timer.cancel()
        _close_quietly(sock)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
