"""Pseudonyms for the personal data a payment carries (e-mail, IP address).

A keyed hash (HMAC-SHA256, the key from configuration) replaces the value at the edge,
before Redis, Kafka, the spool or the history see it. The same value under the same key
always gives the same token, so the token works as an entity (distinct cards per e-mail),
while nobody without the key can test a guess. An IP's token also names its network
(/24 for IPv4, /48 for IPv6), which is an entity of its own: ``<network>.<address>``.

A token is recognised by its form and never hashed twice, so a payment pseudonymised once
(the spool, a replay of recorded history) passes through again unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # model.schemas imports this module (the tokens' forms)
    from model.schemas import Payment

EMAIL_TOKEN = re.compile(r"^em_[0-9a-f]{24}$")
IP_TOKEN = re.compile(r"^ip_[0-9a-f]{16}\.[0-9a-f]{16}$")


def _digest(key: bytes, kind: str, value: str, length: int) -> str:
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:length]


def normalise_email(value: str) -> str:
    return value.strip().lower()


def email_token(key: bytes, email: str) -> str:
    if EMAIL_TOKEN.match(email):
        return email
    return "em_" + _digest(key, "email", normalise_email(email), 24)


def _address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address, an IPv4 one written as IPv6 (``::ffff:203.0.113.7``) as IPv4: one
    host, one token."""
    ip = ipaddress.ip_address(address.strip())
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def ip_network(address: str) -> str:
    """The coarse network an address belongs to: its /24 (IPv4) or /48 (IPv6)."""
    return _network(_address(address))


def ip_token(key: bytes, address: str) -> str:
    if IP_TOKEN.match(address):
        return address
    ip = _address(address)
    return ("ip_" + _digest(key, "net", _network(ip), 16) + "."
            + _digest(key, "ip", str(ip), 16))


def ip_prefix_of(value: str | None) -> str | None:
    """The network entity of an IP field: the network part of its token, or the network of
    a raw address (the simulator's frames, before pseudonymisation)."""
    if not value:
        return None
    if IP_TOKEN.match(value):
        return value.split(".", 1)[0]
    try:
        return ip_network(value)
    except ValueError:
        return None


def pseudonymise(payment: Payment, key: bytes) -> Payment:
    """The payment with its e-mail and IP replaced by their tokens under ``key``.

    The same object when it carries neither, or only tokens already: today's payments
    (no e-mail, no IP) cost an attribute test or two. The payment is expected validated
    (``model.schemas.Payment``: a plausible e-mail, a valid IP address)."""
    email, ip = payment.email, payment.ip
    if email is None and ip is None:
        return payment
    # The token functions return a token as it is: only what changed is copied in.
    update: dict[str, str] = {}
    if email is not None and (token := email_token(key, email)) != email:
        update["email"] = token
    if ip is not None and (token := ip_token(key, ip)) != ip:
        update["ip"] = token
    return payment.model_copy(update=update) if update else payment
