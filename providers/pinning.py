"""Outbound HTTP connections pinned to the address the endpoint guard approved.

The guard (``providers.guard``) resolves a tenant's host and refuses internal
addresses. A client that then resolves the name again itself (botocore,
requests, urllib3 all do) may get a different answer: DNS rebinding, a name
that answers a public address to the guard and ``127.0.0.1`` a moment later.
Every HTTP client built from tenant input therefore opens its sockets here:
the connection classes below resolve the host once through the guard and
connect to an address it approved, while TLS still verifies the certificate
for the host name (SNI) and the ``Host`` header stays the URL's. Nothing else
of the client changes (timeouts, socket options, keep-alive).

- ``session()``: a ``requests.Session`` with pinned adapters (SendGrid,
  Mailgun, the Cloudflare API, HTTPS offload, the SNS certificate fetch);
- ``pin(client)``: a botocore client (SES, SQS, S3/R2) on pinned pools;
- ``pool_manager(...)``: a ``urllib3.PoolManager`` on pinned pools (the R2
  Worker storage).

Every failure to connect is the same ``NewConnectionError`` with the same
text (``UNREACHABLE``), whatever the cause (refused, timed out, unreachable,
refused by the guard at connect time), and the providers report every
transport failure with that one phrase: an endpoint's errors never tell a
closed port from an open one. Through an operator's egress proxy (the
standard ``HTTPS_PROXY`` variables) the socket goes to the proxy, which then
resolves the tenant's host itself: that proxy is trusted to apply the same
policy (SECURITY.md).
"""
from __future__ import annotations

from typing import Any

import requests
import urllib3
from botocore import awsrequest
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError
from urllib3.util import connection as u3connection

from providers import guard

#: what every connection failure says, whatever its cause
UNREACHABLE = "unreachable (no connection, or no valid answer)"
#: the code every transport failure carries
UNREACHABLE_CODE = "unreachable"


class _Pinned:
    """``_new_conn`` of urllib3's connections, to an address the guard approved."""

    def _new_conn(self: Any):
        if getattr(self, "proxy", None) is not None:  # the operator's egress proxy: it resolves the host
            return super()._new_conn()  # type: ignore[misc]
        try:
            addresses = guard.resolve(self._dns_host, self.port)
        except guard.EndpointRefused:
            raise NewConnectionError(self, UNREACHABLE) from None
        for address in addresses:
            try:
                return u3connection.create_connection((address, self.port), self.timeout,
                                                      source_address=self.source_address,
                                                      socket_options=self.socket_options)
            except OSError:
                continue
        raise NewConnectionError(self, UNREACHABLE) from None


class PinnedHTTPConnection(_Pinned, HTTPConnection):
    pass


class PinnedHTTPSConnection(_Pinned, HTTPSConnection):
    pass


class PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


POOLS = {"http": PinnedHTTPConnectionPool, "https": PinnedHTTPSConnectionPool}


class PinnedAWSHTTPConnection(_Pinned, awsrequest.AWSHTTPConnection):
    pass


class PinnedAWSHTTPSConnection(_Pinned, awsrequest.AWSHTTPSConnection):
    pass


class PinnedAWSHTTPConnectionPool(awsrequest.AWSHTTPConnectionPool):
    ConnectionCls = PinnedAWSHTTPConnection


class PinnedAWSHTTPSConnectionPool(awsrequest.AWSHTTPSConnectionPool):
    ConnectionCls = PinnedAWSHTTPSConnection


AWS_POOLS = {"http": PinnedAWSHTTPConnectionPool, "https": PinnedAWSHTTPSConnectionPool}


class PinnedAdapter(HTTPAdapter):
    """requests' adapter on pinned pools."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(POOLS)


def session() -> requests.Session:
    """A ``requests.Session`` whose every connection is pinned."""
    s = requests.Session()
    for prefix in ("https://", "http://"):
        s.mount(prefix, PinnedAdapter())
    return s


def pool_manager(**kwargs: Any) -> urllib3.PoolManager:
    """A ``urllib3.PoolManager`` whose every connection is pinned."""
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = dict(POOLS)
    return manager


def pin(client: Any) -> Any:
    """``client`` (a botocore/boto3 client, before its first call) on pinned pools; returns it."""
    http = client._endpoint.http_session
    http._pool_classes_by_scheme = dict(AWS_POOLS)  # the proxy managers it makes later take these too
    http._manager.pool_classes_by_scheme = http._pool_classes_by_scheme
    return client
