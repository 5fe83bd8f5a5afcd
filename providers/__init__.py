"""Delivery backends behind one small interface.

A provider gets plain data (rendered messages, credentials in a dict) and
returns plain results. Nothing in this package imports from ``dashboard``.
Senders, offload transports and storage share one registry
(``providers.registry``), where each declares the settings it reads.
"""
from providers import registry  # noqa: F401
from providers.base import (  # noqa: F401
    Attachment,
    BounceReport,
    ConnectionFailure,
    Message,
    PermanentError,
    Provider,
    ProviderError,
    QuotaExceededError,
    Result,
    ResultStatus,
    RetryableError,
    ThrottledError,
    WebhookRefused,
    WebhookReply,
    WebhookUnavailable,
    get_provider,
    register,
)
