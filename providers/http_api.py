"""What the HTTP API providers (SendGrid, Mailgun) share: one guarded session.

Their API base URLs are fixed per provider (and region); only the operator
may point them elsewhere (``providers.registry.configure(api_bases=...)``,
for tests). Every request's URL still passes the endpoint guard
(``providers.guard.check_url``), and every failure becomes a
``providers.base`` error whose reason holds the provider's name, the HTTP
status and a fixed phrase, never the remote body.
"""
from __future__ import annotations

import logging
from typing import Any

import requests

from providers import guard, pinning
from providers.base import ConnectionFailure, PermanentError, ProviderError, RetryableError, ThrottledError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0


class CredentialsRejected(PermanentError):
    """The provider refused the API key (401/403)."""


def retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` in seconds (the delta form), when the answer has one."""
    try:
        seconds = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def json_body(response: requests.Response) -> Any:
    """The parsed body, or ``None`` when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def call_error(label: str, response: requests.Response) -> ProviderError | None:
    """The whole-call error of an answer (429, 5xx, 401/403), or ``None`` for the others."""
    status = response.status_code
    if status == 429:
        return ThrottledError(f"{label} HTTP 429: rate limited", code="429", retry_after=retry_after(response))
    if status >= 500:
        return RetryableError(f"{label} HTTP {status}: server error", code=str(status))
    if status in (401, 403):
        return CredentialsRejected(f"{label} HTTP {status}: the API key was refused", code=str(status))
    return None


class ApiSession:
    """A keep-alive session to one provider's API; ``request`` guards and classifies."""

    def __init__(self, label: str, cloud: str, base: str, *, timeout: float = DEFAULT_TIMEOUT,
                 auth: Any = None, headers: dict[str, str] | None = None):
        self.label, self.cloud, self.base = label, cloud, base.rstrip("/")
        self.timeouts = (min(timeout, 5.0), timeout)
        self._auth, self._headers = auth, headers or {}
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = pinning.session()
            self._session.auth = self._auth
            self._session.headers.update({"Accept": "application/json", "User-Agent": "manireports-offload",
                                          **self._headers})
        return self._session

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One API call; a refused endpoint or a transport failure is a ``ProviderError``."""
        url = self.base + path
        try:
            guard.check_url(url, self.cloud)
        except guard.EndpointRefused as exc:
            raise PermanentError(f"{self.label} endpoint refused: {exc.rule}", code="endpoint_refused") from None
        try:
            return self.session.request(method, url, timeout=self.timeouts, allow_redirects=False, **kwargs)
        # every transport failure says the same: a closed port reads as an open one
        except requests.ReadTimeout:
            # the request may have been accepted: the caller retries, and the provider may dedupe
            raise RetryableError(f"{self.label} API {pinning.UNREACHABLE}", code="read_timeout") from None
        except (requests.ConnectTimeout, requests.ConnectionError):
            raise ConnectionFailure(f"{self.label} API {pinning.UNREACHABLE}",
                                    code=pinning.UNREACHABLE_CODE) from None
        except requests.RequestException:
            raise RetryableError(f"{self.label} API {pinning.UNREACHABLE}", code=pinning.UNREACHABLE_CODE) from None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
