"""The provider objects for a route (the route itself: ``core.routing``)."""
from __future__ import annotations

from core import settings
from core.routing import Route, fallback_config, fallback_route, primary_route, relay_sender
from providers import Provider, get_provider

__all__ = ["Route", "fallback_config", "fallback_route", "primary_route", "provider_for", "relay_sender"]

#: provider instances per worker process; boto3 clients are slow to build
_cache: dict[tuple, Provider] = {}


def provider_for(company_id: int, route: Route, version) -> Provider:
    """A cached provider for the route; rebuilt when the settings change (``version``)."""
    key = (company_id, route.kind, route.provider, version)
    provider = _cache.get(key)
    if provider is None:
        for old in [k for k in _cache if k[:3] == key[:3]]:
            _cache.pop(old).close()
        config = route.config
        timeout = settings.current().provider_timeout_s
        if timeout:  # the operator's read timeout of one call, over each provider's own default
            config = {**config, "timeout": timeout}
        provider = _cache[key] = get_provider(route.provider, config)
    return provider
