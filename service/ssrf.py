"""Where webhooks may be sent: https URLs whose every address is public, checked when a URL is
given and again on every connection, at the address connected to.

A URL is checked when it is given (the name resolved off the event loop) so that a user learns
at once, and again at delivery: by the IP literal itself, or by the resolver of the delivery
client (PublicResolver), which hands the connector only the public addresses a name resolves
to, so a name that resolves elsewhere later (DNS rebinding) reaches nothing private either.
WEBHOOK_ALLOW_PRIVATE=1 lifts both rules (http, and any address), for tests and private
deployments.
"""

import asyncio
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

RESOLVE_TIMEOUT_SECONDS = 5.0
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052 and 8215).
_NAT64 = (ip_network("64:ff9b::/96"), ip_network("64:ff9b:1::/48"))


class RefusedUrl(ValueError):
    """The URL may not be a webhook's; the message says why and is safe to show."""


class RefusedAddress(OSError):
    """A name resolved to no public address; refused before connecting."""


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if it is one of the forms that carry one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    # ::a.b.c.d, the deprecated IPv4-compatible form (:: and ::1 themselves are not public).
    if int(address) >> 32 == 0 and int(address) > 1:
        return IPv4Address(int(address))
    return None


def is_public(host: str) -> bool:
    """Whether an IP address may be connected to: none that is loopback, private, link-local,
    multicast, reserved, unspecified or otherwise not global, nor an IPv6 form of one."""
    try:
        address = ip_address(host.split("%", 1)[0])  # a scope id (fe80::1%eth0) is never public anyway
    except ValueError:
        return False
    if isinstance(address, IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(str(embedded))
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def _host_of(url: str, allow_private: bool) -> tuple[str, int]:
    """The URL's host and port, if its form is one a webhook may have."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedUrl("Must be a valid URL.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise RefusedUrl("Must be an https:// URL.")
    if not parts.hostname:
        raise RefusedUrl("Must name a host.")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("Must not carry credentials; authenticate by the signature.")
    if parts.fragment:
        raise RefusedUrl("Must not have a fragment.")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _is_ip_literal(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def check_url_form(url: str, allow_private: bool) -> str | None:
    """Check what can be checked without a lookup; returns the host name to resolve, or None
    when there is none to (an IP literal, or private addresses allowed). Raises RefusedUrl."""
    host, _ = _host_of(url, allow_private)
    if allow_private:
        return None
    if _is_ip_literal(host):
        if not is_public(host):
            raise RefusedUrl("Must not point at a loopback, private, link-local or reserved address.")
        return None
    return host


async def check_url(url: str, allow_private: bool) -> None:
    """Check a URL given for a webhook, resolving its name with the event loop's getaddrinfo
    (in a thread, off the loop); raises RefusedUrl naming what is wrong."""
    host = check_url_form(url, allow_private)
    if host is None:
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        raise RefusedUrl(f"The host {host} does not resolve.") from None
    if not infos or not all(is_public(str(info[4][0])) for info in infos):
        raise RefusedUrl(f"The host {host} resolves to a loopback, private, link-local or reserved address.")


class PublicResolver(AbstractResolver):
    """The delivery client's resolver: the name's public addresses only, so that the address
    connected to is one checked. An IP literal never reaches a resolver (aiohttp connects to it
    as it is): the delivery job checks those with check_url_form."""

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()  # the loop's getaddrinfo

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        public = [result for result in found if is_public(result["host"])]
        if not public:
            raise RefusedAddress(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._resolver.close()


def is_refused_address(error: BaseException) -> bool:
    """Whether a delivery's connection error was PublicResolver refusing every address."""
    return isinstance(error, RefusedAddress) or isinstance(getattr(error, "os_error", None), RefusedAddress)
