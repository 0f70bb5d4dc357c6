"""Where the platform may send requests on a principal's behalf: the callback address policy.

One policy, used at both points where it matters: at submit (:func:`callback_url_check`, a
refusal is ``400 callback_url_forbidden`` and nothing is recorded) and at send time, against
the address the webhook sender actually connects to (:func:`address_refusal`; the sender
resolves the name once and connects to that address itself, so a DNS answer that changes
between the two — rebinding — meets the same check).

A callback URL must be ``http`` or ``https`` with a host name and no credentials, and every
address its host resolves to must be a public unicast address: not private, loopback,
link-local (169.254.0.0/16, where cloud metadata services answer), multicast, reserved,
unspecified or otherwise not globally routable — unless it lies inside one of
``WEBHOOK_ALLOWED_NETWORKS`` (CIDR list, default empty; e.g. ``10.20.0.0/16`` for receivers on
an internal network, ``127.0.0.0/8`` in tests).
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

from common.errors import DomainError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES = ("http", "https")


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def allowed_networks() -> tuple[IPNetwork, ...]:
    return _networks(tuple(settings.WEBHOOK_ALLOWED_NETWORKS))


def address_refusal(address: str) -> str | None:
    """Why a request may not go to ``address`` (an IP literal), or None if it may."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip.version == net.version and ip in net for net in allowed_networks()):
        return None
    for reason, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    ):
        if hit:
            return reason
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection, in resolver order (raises
    ``OSError`` when it does not resolve)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _forbidden(url: str, reason: str) -> DomainError:
    return DomainError("callback_url_forbidden", f"callback_url {reason}", errors={"callback_url": [reason]},
                       callback_url=url)


def callback_url_check(*, url: str) -> None:
    """Refuse (``callback_url_forbidden``) a callback URL the platform may not call; "" is none."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise _forbidden(url, "must be http or https")
    if not parts.hostname:
        raise _forbidden(url, "has no host")
    if parts.username is not None or parts.password is not None:
        raise _forbidden(url, "must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _forbidden(url, "has an invalid port") from None
    try:
        addresses = resolve(parts.hostname, port)
    except OSError:
        raise _forbidden(url, f"host {parts.hostname} does not resolve") from None
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            raise _forbidden(url, f"resolves to a forbidden address ({address}: {reason})")
