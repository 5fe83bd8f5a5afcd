"""The endpoint guard: every outbound connection a tenant can aim passes here.

A tenant names hosts in its settings (SES/SQS/S3 endpoint URLs, Cloudflare
API and Worker URLs, its SMTP relay, its LMS database). Left alone, those
reach the operator's own network: the metadata service, an internal admin
page, a database listening on loopback. The guard resolves the name,
refuses addresses of the kinds below unless the operator allowed private
endpoints (``OFFLOAD_ALLOW_PRIVATE_ENDPOINTS=1``, for local emulators and
tests), and hands back the checked address so the caller connects to it
and not to a second, possibly different, answer of DNS.

In production, endpoint *URLs* must also name a host of the cloud they
stand for (AWS, Cloudflare) or one the operator listed.

Like the rest of ``providers``, this imports nothing of the service: the app
factory and the worker call ``configure`` with the settings.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: hostnames each cloud's endpoints live under (suffix match on a dot boundary)
CLOUD_SUFFIXES: dict[str, tuple[str, ...]] = {
    "aws": ("amazonaws.com", "amazonaws.com.cn", "api.aws"),
    "cloudflare": ("cloudflare.com", "workers.dev", "r2.cloudflarestorage.com", "cloudflarestorage.com"),
}
#: cloud metadata endpoints, refused even where private addresses are allowed
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("169.254.170.2"),
                      ipaddress.ip_address("fd00:ec2::254")})


class EndpointRefused(ValueError):
    """The guard refused a host; ``rule`` names the rule, the message says why."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


@dataclass
class Policy:
    allow_private: bool = False
    production: bool = False
    #: operator-listed extra hosts (exact names, or ``.suffix``)
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)


_policy = Policy()


def configure(*, allow_private: bool, production: bool, allowed_hosts=()) -> None:
    """Set the process-wide policy (from the app factory / worker start)."""
    global _policy
    _policy = Policy(allow_private=bool(allow_private), production=bool(production),
                     allowed_hosts=tuple(h.strip().lower() for h in allowed_hosts if h.strip()))


def policy() -> Policy:
    return _policy


def address_rule(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The rule an address breaks, or ``None`` when it is a public one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private or ip.is_reserved or ip.is_multicast or not ip.is_global:
        return "private"
    return None


def _literal(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 address (optionally in brackets)."""
    return _literal((host or "").strip()) is not None


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to that the policy allows, in DNS order.

    Raises ``EndpointRefused`` naming the rule when none may be used: a
    private address refuses the whole name (a name that resolves partly
    inside the network is not trusted to pick the outside one).
    """
    host = (host or "").strip().rstrip(".").lower()
    if not host:
        raise EndpointRefused("no-host", "no host is set")
    if not 0 < int(port) < 65536:
        raise EndpointRefused("port", f"port {port} is out of range")
    literal = _literal(host)
    if literal is not None:
        candidates = [str(literal)]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError):
            raise EndpointRefused("unresolvable", f"{host} does not resolve") from None
        candidates = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in candidates:
        rule = address_rule(ipaddress.ip_address(address.split("%")[0]))
        if rule == "metadata" or (rule and not _policy.allow_private):
            raise EndpointRefused(rule, f"{host} resolves to a {rule} address, which tenants may not reach"
                                        + ("" if rule == "metadata" else
                                           " (OFFLOAD_ALLOW_PRIVATE_ENDPOINTS is off)"))
    return candidates


def host_allowed_for(host: str, cloud: str) -> bool:
    """True when ``host`` belongs to ``cloud``'s domains or the operator's list."""
    host = host.lower().rstrip(".")
    for entry in _policy.allowed_hosts:
        if host == entry.lstrip(".") or (entry.startswith(".") and host.endswith(entry)):
            return True
    return any(host == s or host.endswith("." + s) for s in CLOUD_SUFFIXES.get(cloud, ()))


def check_url(url: str, cloud: str) -> str:
    """Check a tenant-set endpoint URL of ``cloud`` (``aws``, ``cloudflare``); returns it.

    The scheme must be https (http only where private endpoints are allowed,
    for local emulators), with no credentials in it; in production the host
    must be one of the cloud's or the operator's list; and it must resolve
    to addresses the policy allows.
    """
    try:
        parts = urlsplit((url or "").strip())
        port = parts.port
    except ValueError:
        raise EndpointRefused("malformed", "the URL is malformed") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise EndpointRefused("scheme", "expected an https:// URL")
    if parts.scheme == "http" and not _policy.allow_private:
        raise EndpointRefused("scheme", "expected an https:// URL (plain http only with "
                                        "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS=1)")
    if parts.username or parts.password:
        raise EndpointRefused("credentials", "the URL must not carry credentials")
    if _policy.production and not host_allowed_for(parts.hostname, cloud) and not _policy.allow_private:
        raise EndpointRefused("not-allowed-host", f"{parts.hostname} is not a {cloud} host nor on the "
                                                  "operator's list (OFFLOAD_ALLOWED_ENDPOINT_HOSTS)")
    resolve(parts.hostname, port or (443 if parts.scheme == "https" else 80))
    return url.strip()


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port`` made to an address the guard checked."""
    last: OSError | None = None
    for address in resolve(host, port):
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            last = exc
    raise last or OSError(f"could not connect to {host}:{port}")
