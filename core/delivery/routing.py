"""Which way a batch goes, decided here and nowhere else.

Two questions, asked by the planner, the sweep, a resume, "retry now" and
the workers alike:

- **Submitted or sent here?** (``way``, and ``WAY_SQL`` for queries that ask
  it of many batches at once.) A company in offload mode with delivery enabled
  has its batches submitted to its own cloud queue; everything else, and every
  job taken from IOMAD's queue (the LMS hook: Reply-To, attachments, the
  marking of its rows), is sent by a worker here.
- **By which route?** (``primary_route``, ``fallback_route``, ``first_route``.)
  The company's provider (``direct:<sender>``) or, in offload mode, its cloud
  queue (``offload:<transport>``); the SMTP fallback (``fallback:smtp``: the
  company's own SMTP, else the operator's relay where the operator enabled it)
  when delivery is disabled or the provider's circuit is open.

``provider_for`` builds (and caches per process) the provider object of a
route; ``planned_route`` tells the dashboard where a waiting batch goes next.
"""
from __future__ import annotations

from dataclasses import dataclass

import redis

from core import settings
from core.delivery import limits
from providers import Provider, get_provider, registry
from providers.base import OPERATOR_ENDPOINT

#: the two ways: a worker here sends the batch, or submits it to the company's cloud queue
SEND, SUBMIT = "send", "submit"
#: jobs of this source are always sent here (``core.lms.mail_hook`` runs in the send loop)
LMS_SOURCE = "lms"


def way(source: str | None, mode: str | None, enabled: bool | None) -> str:
    """``SUBMIT`` when a job's batches go to its company's cloud queue, else ``SEND``."""
    return SUBMIT if mode == "offload" and enabled and source != LMS_SOURCE else SEND


#: ``way`` in SQL, over ``jobs AS jb LEFT JOIN delivery_settings AS ds`` (no settings: sent here)
WAY_SQL = (f"CASE WHEN ds.mode = 'offload' AND ds.enabled AND jb.source <> '{LMS_SOURCE}' "
           f"THEN '{SUBMIT}' ELSE '{SEND}' END")
#: batches ``b`` with what ``WAY_SQL`` reads: their job and its company's delivery settings
BATCH_WAY_FROM = ("FROM batches b JOIN jobs jb ON jb.id = b.job_id "
                  "LEFT JOIN delivery_settings ds ON ds.company_id = b.company_id")


def way_of(source: str | None, delivery) -> str:
    """``way`` of a job of ``source`` for a company's ``DeliverySettings`` row (``None``: none yet)."""
    if delivery is None:
        return SEND
    return way(source, delivery.mode, delivery.enabled)


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
    """The SMTP fallback route, or ``None`` when the company has none."""
    cfg = fallback_config(settings_config, global_fallback, relay_enabled)
    return None if cfg is None else Route("fallback", registry.fallback_sender(), cfg,
                                          relay=cfg is not settings_config)


def first_route(settings_config: dict, conn: redis.Redis | None, company_id: int, global_fallback: dict | None,
                relay_enabled: bool = False) -> Route | None:
    """The route a batch sent here takes first.

    The company's provider, unless delivery is disabled, its circuit is open, or it
    is an offload route (an offload company's batch is only ever sent here on the
    fallback): then the fallback, which may be ``None``.
    """
    route = primary_route(settings_config)
    if route is None or route.kind == "offload" or \
            (conn is not None and limits.breaker_is_open(conn, company_id, route.provider)):
        return fallback_route(settings_config, global_fallback, relay_enabled)
    return route


def relay_sender(sender: str, service_from: str, approved: set[str]) -> tuple[str, str | None]:
    """(From, Reply-To) on the operator's relay: the tenant's sender when its domain is
    approved for the company, else the service's address with the sender as Reply-To."""
    domain = sender.rpartition("@")[2].strip(" >").lower()
    if domain and domain in approved:
        return sender, None
    return service_from, sender


def planned_route(settings_config: dict, global_fallback: dict | None, conn: redis.Redis | None,
                  company_id: int, relay_enabled: bool = False) -> str:
    """The route label the next attempt takes, as a worker would choose it now."""
    route = primary_route(settings_config)
    breaker_open = route is not None and conn is not None and limits.breaker_is_open(conn, company_id,
                                                                                       route.provider)
    if route is None or breaker_open:
        fb = fallback_route(settings_config, global_fallback, relay_enabled)
        if fb is not None:
            return fb.label + (" (circuit open)" if breaker_open else "")
        return "waits: circuit open, no fallback" if breaker_open else "none: delivery disabled, no fallback"
    return route.label


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
