"""Which way a batch goes: the company's provider, the SMTP fallback, or its
cloud queue (offload). The workers decide with these (``tasks.routing`` adds
the provider objects); the dashboard uses ``planned_route`` to say where a
waiting batch will go next."""
from __future__ import annotations

from dataclasses import dataclass

import redis

from providers import registry
from providers.base import OPERATOR_ENDPOINT


@dataclass(frozen=True)
class Route:
    kind: str            # direct | fallback | offload
    provider: str        # the backend's registry name: a sender (direct, fallback) or a transport (offload)
    config: dict
    #: the operator's relay (OFFLOAD_FALLBACK_SMTP): From is the service's, unless the domain is approved
    relay: bool = False

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.provider}"


def fallback_config(settings_config: dict, global_fallback: dict | None,
                    relay_enabled: bool = False) -> dict | None:
    """The company's own SMTP settings first, then OFFLOAD_FALLBACK_SMTP when the
    operator enabled it for the company (``relay_enabled``)."""
    fallback = registry.fallback_sender()
    if settings_config.get("provider") != fallback and registry.configured(registry.SENDER, fallback,
                                                                            settings_config):
        return settings_config
    if global_fallback is None or not relay_enabled:
        return None
    return {**global_fallback, OPERATOR_ENDPOINT: True}


def primary_route(settings_config: dict) -> Route | None:
    """The company's configured way to send, or ``None`` when delivery is disabled: its
    sender (direct), or in offload mode the transport its batches take (``offload:sqs``);
    a sender with no cloud worker to offload to sends direct."""
    if not settings_config.get("enabled", True):
        return None
    sender = registry.canonical(registry.SENDER, settings_config.get("provider") or registry.fallback_sender())
    transport = registry.offload_transport(settings_config) if settings_config.get("mode") == "offload" else None
    if transport is not None:
        return Route("offload", transport, settings_config)
    return Route("direct", sender, settings_config)


def fallback_route(settings_config: dict, global_fallback: dict | None, relay_enabled: bool = False) -> Route | None:
    cfg = fallback_config(settings_config, global_fallback, relay_enabled)
    return None if cfg is None else Route("fallback", registry.fallback_sender(), cfg,
                                          relay=cfg is not settings_config)


def relay_sender(sender: str, service_from: str, approved: set[str]) -> tuple[str, str | None]:
    """(From, Reply-To) on the operator's relay: the tenant's sender when its domain is
    approved for the company, else the service's address with the sender as Reply-To."""
    domain = sender.rpartition("@")[2].strip(" >").lower()
    if domain and domain in approved:
        return sender, None
    return service_from, sender


def breaker_key(company_id: int, provider: str) -> str:
    """The Redis key prefix of a company's circuit breaker for ``provider`` (``tasks.limits``)."""
    return f"offload:cb:{company_id}:{provider}"


def planned_route(settings_config: dict, global_fallback: dict | None, conn: redis.Redis | None,
                  company_id: int, relay_enabled: bool = False) -> str:
    """The route label the next attempt takes, as a worker would choose it now."""
    route = primary_route(settings_config)
    breaker_open = False
    if route is not None and conn is not None:
        try:
            breaker_open = bool(conn.exists(breaker_key(company_id, route.provider) + ":open"))
        except (redis.RedisError, OSError):
            breaker_open = False
    if route is None or breaker_open:
        fb = fallback_route(settings_config, global_fallback, relay_enabled)
        if fb is not None:
            return fb.label + (" (circuit open)" if breaker_open else "")
        return "waits: circuit open, no fallback" if breaker_open else "none: delivery disabled, no fallback"
    return route.label
