"""The host allow-list: in production the web app answers only the Host names the operator
expects (``OFFLOAD_ALLOWED_HOSTS``, default the host of ``OFFLOAD_PUBLIC_URL``), so a forged
Host header cannot steer anything the app builds from it. ``*`` answers any name; outside
production (an empty list) any name is answered.

The health probes (``/healthz``, ``/readyz``) answer any Host: load balancers and orchestrators
probe by address, and they reveal nothing a tenant could use.
"""
from __future__ import annotations

from flask import Response, request
from werkzeug.sansio.utils import host_is_trusted

from core import settings

#: paths answered whatever the Host header says
PROBES = frozenset({"/healthz", "/readyz"})


def allowed(host: str, names: tuple[str, ...]) -> bool:
    """True when ``host`` (``name[:port]``) is one of ``names`` (``.suffix`` for a domain and its
    subdomains; ``*`` for any), or ``names`` is empty."""
    if not names or "*" in names:
        return True
    return host_is_trusted(host, names)


def init_app(app) -> None:
    @app.before_request
    def check_host():
        if request.path in PROBES:
            return None
        if allowed(request.host, settings.current().allowed_hosts):
            return None
        return Response("unknown host: this service does not answer that name\n", status=400,
                        mimetype="text/plain")
