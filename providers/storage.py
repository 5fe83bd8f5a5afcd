"""Object storage for generated files (certificate PDFs): one interface, three backends.

A storage is built from a plain config dict, like a mail provider, and
raises the ``providers.base`` errors so callers can tell a retry from a
misconfiguration:
- ``S3Storage`` (kind ``s3``): AWS S3, or any S3-compatible endpoint
  (moto, MinIO, Cloudflare R2's ``https://<account>.r2.cloudflarestorage.com``
  with region ``auto``).
- ``R2Storage`` (kind ``r2``): ``S3Storage`` with R2's endpoint derived from
  ``cloudflare_account_id`` and region ``auto``.
- ``WorkerR2Storage`` (kind ``worker_r2``): R2 behind the company's own
  Cloudflare Worker (``cloud_workers/cloudflare/certificates.js``), which
  holds the bucket binding. Every request, and every download link, carries
  ``expires`` and an HMAC-SHA256 ``sig`` over the method, key and expiry
  (see :func:`signing_string`); the Worker refuses anything else.
- ``LocalStorage`` (kind ``local``): files under a folder of this machine,
  for development and single-machine installs. Download links are the web
  app's own ``<base_url>/certificates/files/<key>``, signed like the
  Worker's (``LocalStorage.check_link`` verifies them).

Keys are ``/``-separated segments of ``[A-Za-z0-9._-]`` that each start with
a letter or digit, so no key can hold ``..``, an absolute path or ``//``.
Nothing here imports from ``dashboard`` or ``tasks``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Self
from urllib.parse import quote, urlsplit

import urllib3
from botocore import exceptions as boto_errors
from botocore.config import Config as BotoConfig
from botocore.parsers import ResponseParserError

from providers import pinning, registry
from providers.aws import AWS_SETTINGS, aws_session
from providers.base import (
    ConnectionFailure,
    PermanentError,
    ProviderError,
    RetryableError,
    ThrottledError,
    for_field,
    guarded_url,
    not_the_provider,
    safe_code,
)
from providers.cloudflare import CLOUDFLARE_SETTINGS

KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
MAX_KEY_LENGTH = 512
#: S3's own ceiling for a SigV4 presigned URL: seven days.
MAX_LINK_SECONDS = 7 * 24 * 3600
CHUNK_SIZE = 64 * 1024

#: the object a connection test writes, reads back and removes
PROBE_KEY, PROBE = "offload-connection-test/probe", b"offload connection test"
_S3_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_S3_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                           "TooManyRequests", "TooManyRequestsException"})
_S3_AUTH = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                      "AuthorizationHeaderMalformed", "ExpiredToken", "InvalidToken", "credentials", "403"})
_S3_KNOWN = _S3_NOT_FOUND | _S3_THROTTLED | _S3_AUTH | {"NoSuchBucket", "InternalError", "ServiceUnavailable",
                                                       "PermanentRedirect", "InvalidBucketName", "400", "500", "503"}


class ObjectNotFound(PermanentError):
    """The key names no object in the bucket."""


# --------------------------------------------------------------------------- helpers


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise ``ValueError``."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid storage key {str(key)[:80]!r}")
    return key


def check_expiry(expires_in: int) -> int:
    """Return ``expires_in`` if it is a usable link lifetime in seconds, else raise ``ValueError``."""
    if not isinstance(expires_in, int) or not 0 < expires_in <= MAX_LINK_SECONDS:
        raise ValueError(f"expires_in must be 1..{MAX_LINK_SECONDS} seconds, not {expires_in!r}")
    return expires_in


def check_content_type(content_type: str) -> str:
    """Return ``content_type`` if it is a plain header value, else raise ``ValueError``."""
    if not content_type or any(ch in content_type for ch in "\r\n\x00") or len(content_type) > 200:
        raise ValueError(f"invalid content type {content_type[:80]!r}")
    return content_type


def download_name(key: str) -> str:
    """The file name a download of ``key`` is saved as (its last segment)."""
    return key.rsplit("/", 1)[-1]


def content_disposition(key: str) -> str:
    """``Content-Disposition`` for a download of ``key``; safe because keys are restricted."""
    return f'attachment; filename="{download_name(key)}"'


class Storage:
    """Base class: subclasses set ``kind`` and implement the six operations.

    ``label`` names it in the connection test; ``cloud`` is the endpoint
    guard's name for the hosts its links point at; ``configured`` says
    whether a company's settings ask for it. Of the storages a company's
    settings ask for, one of its sender's cloud comes first, the highest
    ``preference`` first; a ``last_resort`` storage only serves when none
    is asked for and the operator allows it (``registry.choose_storage``).
    """

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""
    cloud: ClassVar[str] = ""
    settings: ClassVar[registry.SettingsGroup | None] = None
    preference: ClassVar[int] = 0
    last_resort: ClassVar[bool] = False

    @classmethod
    def configured(cls, config: Mapping[str, Any]) -> bool:
        """Whether a company's settings ask for this storage."""
        return False

    def __init__(self, config: Mapping[str, Any]):
        self.config = config

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any object already there."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        """Return the whole object; ``ObjectNotFound`` when there is none."""
        raise NotImplementedError

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the object in chunks without holding it whole (for ZIP downloads)."""
        raise NotImplementedError

    def presigned_url(self, key: str, expires_in: int) -> str:
        """Return a GET link to the object that stops working after ``expires_in`` seconds."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        raise NotImplementedError

    def test_connection(self) -> dict:
        """Check credentials and reachability; return facts to show."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register_storage(cls: type[Storage]) -> type[Storage]:
    """Class decorator: make ``cls`` available to :func:`get_storage` under ``cls.kind``
    (``registry``, kind ``storage``)."""
    return registry.add(registry.STORAGE, cls.kind, cls)


def get_storage(kind: str, config: Mapping[str, Any]) -> Storage:
    """Build the storage registered as ``kind`` (``s3``, ``r2``, ``worker_r2``) from ``config``."""
    try:
        return registry.create(registry.STORAGE, kind, config)
    except registry.UnknownBackend:
        raise PermanentError(f"unknown storage kind {kind!r}", code="unknown_storage") from None


def _required(config: Mapping[str, Any], name: str) -> str:
    value = config.get(name)
    if not value or not isinstance(value, str):
        raise PermanentError(f"storage setting {name} is not set", code="misconfigured")
    return value


# --------------------------------------------------------------------------- local files


@register_storage
class LocalStorage(Storage):
    """Files under ``path`` (config ``local_path``), one per key.

    Config: ``local_path`` (the folder, created when missing), ``base_url``
    (the web app's public URL) and ``signing_secret`` (signs download links).
    Writes go to a temporary file renamed into place, so a reader never sees
    half a PDF.
    """

    kind = "local"
    label = "this machine's disk"
    last_resort = True
    link_path: ClassVar[str] = "/certificates/files/"

    def __init__(self, config: Mapping[str, Any], *, clock: Callable[[], float] = time.time):
        super().__init__(config)
        self.root = os.path.abspath(_required(config, "local_path"))
        self.base_url = _required(config, "base_url").rstrip("/")
        self.secret = _required(config, "signing_secret")
        self.clock = clock

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str) -> None:
        check_content_type(content_type)
        path = self._path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise PermanentError(f"cannot write {key}: {exc.strerror}", code="local_write") from None

    def get(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key}", code="not_found") from None
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def presigned_url(self, key: str, expires_in: int) -> str:
        check_key(key)
        expires = int(self.clock()) + check_expiry(expires_in)
        sig = sign(self.secret, "GET", key, expires)
        return f"{self.base_url}{self.link_path}{quote(key, safe='/')}?expires={expires}&sig={sig}"

    def check_link(self, key: str, expires: str, sig: str) -> bool:
        """True when ``sig`` is this storage's signature of a GET of ``key`` still in date."""
        try:
            check_key(key)
            when = int(expires)
        except (PermanentError, ValueError):
            return False
        if when < self.clock():
            return False
        return hmac.compare_digest(sign(self.secret, "GET", key, when), sig or "")

    def delete(self, key: str) -> None:
        try:
            os.remove(self._path(key))
        except FileNotFoundError:
            return

    def test_connection(self) -> dict:
        """Write, read back and remove a probe file."""
        probe = "offload-connection-test/probe"
        self.put(probe, b"probe", "application/octet-stream")
        if self.get(probe) != b"probe":
            raise PermanentError("the probe file read back differently", code="local_read")
        self.delete(probe)
        return {"kind": self.kind, "path": self.root}


# --------------------------------------------------------------------------- S3


@register_storage
class S3Storage(Storage):
    """AWS S3 or an S3-compatible endpoint.

    Config: ``s3_bucket`` (required), ``aws_access_key``, ``aws_secret_key``,
    ``aws_region``, ``aws_endpoint_url``. Without keys boto3's own chain
    (environment, instance role) applies; without an endpoint,
    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` are honoured by boto3.
    """

    kind = "s3"
    label = "S3 bucket"
    cloud = "aws"
    settings = AWS_SETTINGS

    @classmethod
    def configured(cls, config: Mapping[str, Any]) -> bool:
        return bool(config.get("s3_bucket"))

    def __init__(self, config: Mapping[str, Any], *, client: Any = None):
        super().__init__(config)
        self.bucket = _required(config, "s3_bucket")
        self.endpoint_url = self._endpoint_url(config)
        self.client = client or self._make_client(config)

    def _endpoint_url(self, config: Mapping[str, Any]) -> str | None:
        """The endpoint named in the config, if any."""
        return config.get("aws_endpoint_url") or None

    def _region(self, config: Mapping[str, Any]) -> str | None:
        """The signing region; R2 endpoints sign as ``auto``."""
        region = config.get("aws_region") or None
        if region is None and self.endpoint_url and ".r2.cloudflarestorage.com" in self.endpoint_url:
            return "auto"
        return region

    def _make_client(self, config: Mapping[str, Any]) -> Any:
        """A boto3 S3 client; path-style and checksums-when-required off AWS."""
        custom = self.endpoint_url is not None
        boto_config = BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if custom else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=float(config.get("timeout") or 30),
            request_checksum_calculation="when_required" if custom else "when_supported",
            response_checksum_validation="when_required" if custom else "when_supported",
        )

        session = aws_session(dict(config), self._region(config))
        # a tenant-named endpoint passes the guard; R2's own (from a checked account id) is Cloudflare's
        endpoint = guarded_url(dict(config), config.get("aws_endpoint_url"), self.cloud) or self.endpoint_url
        return pinning.pin(session.client("s3", endpoint_url=endpoint, config=boto_config))

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Upload ``data`` with its content type."""
        check_key(key)
        check_content_type(content_type)
        with _s3_errors("put", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        """Download the whole object."""
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object body in ``chunk_size`` pieces."""
        check_key(key)
        with _s3_errors("get", key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

    def presigned_url(self, key: str, expires_in: int) -> str:
        """A SigV4 presigned GET, served as an attachment named after the key."""
        check_key(key)
        check_expiry(expires_in)
        params = {"Bucket": self.bucket, "Key": key, "ResponseContentDisposition": content_disposition(key)}
        with _s3_errors("presign", key):
            return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)

    def delete(self, key: str) -> None:
        """Delete the object (S3 answers the same for a missing one)."""
        check_key(key)
        with _s3_errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def test_connection(self) -> dict:
        """``HeadBucket``, then a probe object written, read back and removed: the credentials work,
        the bucket exists, and what answers keeps what it is given (a server answering anything to
        everything does not). A failure names the setting to fix."""
        where = self._where_field()
        try:
            with _s3_errors("head bucket", self.bucket):
                self.client.head_bucket(Bucket=self.bucket)
            self.put(PROBE_KEY, PROBE, "application/octet-stream")
            back = self.get(PROBE_KEY)
            self.delete(PROBE_KEY)
        except ObjectNotFound:
            raise PermanentError(f"bucket {self.bucket!r} does not exist", code="no_bucket",
                                 field="s3_bucket") from None
        except ProviderError as exc:
            raise for_field(exc, "aws_access_key" if exc.code in _S3_AUTH else where) from None
        if back != PROBE:
            raise not_the_provider(self.label, where, "the probe object read back differently")
        return {"kind": self.kind, "bucket": self.bucket,
                "endpoint": self.client.meta.endpoint_url, "region": self.client.meta.region_name}

    def _where_field(self) -> str:
        """The setting that names where the bucket is asked for."""
        return "s3_endpoint_url" if self.endpoint_url else "aws_region"

    def close(self) -> None:
        """Close the client's connection pool."""
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


@register_storage
class R2Storage(S3Storage):
    """Cloudflare R2 through its S3-compatible API.

    Config as :class:`S3Storage` (R2 API token's access key and secret in
    ``aws_access_key``/``aws_secret_key``); the endpoint defaults to
    ``https://<cloudflare_account_id>.r2.cloudflarestorage.com``, region ``auto``.
    """

    kind = "r2"
    label = "R2 bucket"
    cloud = "cloudflare"
    settings = CLOUDFLARE_SETTINGS

    def _endpoint_url(self, config: Mapping[str, Any]) -> str | None:
        """``aws_endpoint_url``, else the account's R2 endpoint."""
        if config.get("aws_endpoint_url"):
            return config["aws_endpoint_url"]
        account = _required(config, "cloudflare_account_id")
        if not re.fullmatch(r"[0-9a-fA-F]{32}", account):
            raise PermanentError("cloudflare_account_id is not an account id", code="misconfigured")
        return f"https://{account}.r2.cloudflarestorage.com"

    def _region(self, config: Mapping[str, Any]) -> str | None:
        """R2 signs with region ``auto`` unless told otherwise."""
        return config.get("aws_region") or "auto"

    def _where_field(self) -> str:
        return "cloudflare_account_id"


@contextmanager
def _s3_errors(action: str, key: str) -> Iterator[None]:
    """Translate botocore exceptions raised in the block into ``providers.base`` errors."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        mapped = s3_error(exc, f"S3 {action} {key}")
        if mapped is None:
            raise
        raise mapped from exc


def s3_error(exc: Exception, what: str) -> ProviderError | None:
    """The ``providers.base`` error for a botocore exception, or ``None`` to let it through."""
    if isinstance(exc, boto_errors.ClientError):
        error = exc.response.get("Error", {})
        code = safe_code(error.get("Code", "")) if error.get("Code") else ""
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        # the code and status only: the message is the remote's text
        shown = code if code in _S3_KNOWN else "error"  # a code S3 does not have came from the body
        reason = f"{what}: {shown} (HTTP {status})" if status else f"{what}: {shown}"
        if code in _S3_NOT_FOUND:
            return ObjectNotFound(reason, code="not_found")
        if code in _S3_THROTTLED or status == 429:
            return ThrottledError(reason, code=code)
        if status >= 500:
            return RetryableError(reason, code=code)
        return PermanentError(reason, code=code)
    if isinstance(exc, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)):
        return PermanentError(f"{what}: no usable credentials", code="credentials")
    # every transport failure says the same: a closed port reads as an open one
    if isinstance(exc, (boto_errors.ReadTimeoutError, boto_errors.ConnectionClosedError,
                        boto_errors.ResponseStreamingError)):
        return RetryableError(f"{what}: {pinning.UNREACHABLE}", code="network")
    if isinstance(exc, (boto_errors.ConnectionError, boto_errors.HTTPClientError)):
        return ConnectionFailure(f"{what}: {pinning.UNREACHABLE}", code=pinning.UNREACHABLE_CODE)
    if isinstance(exc, (boto_errors.BotoCoreError, ResponseParserError)):  # its text may quote the body
        return RetryableError(f"{what}: {type(exc).__name__}", code="unexpected")
    return None


# --------------------------------------------------------------------------- Worker + R2


def signing_string(method: str, key: str, expires: int, content_sha256: str = "") -> str:
    """What the HMAC covers: ``METHOD\\nkey\\nexpires``, plus ``\\nsha256`` of the body for PUT."""
    parts = [method.upper(), key, str(expires)]
    if content_sha256:
        parts.append(content_sha256)
    return "\n".join(parts)


def sign(secret: str, method: str, key: str, expires: int, content_sha256: str = "") -> str:
    """HMAC-SHA256 (hex) of :func:`signing_string`, keyed by the UTF-8 bytes of ``secret``."""
    message = signing_string(method, key, expires, content_sha256).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


@register_storage
class WorkerR2Storage(Storage):
    """R2 behind the company's Cloudflare Worker (``/certificates/<key>``).

    Config: ``worker_url`` (the Worker's base URL) and ``signing_secret``
    (the Worker's ``CERTIFICATE_SIGNING_SECRET``; ``callback_secret`` is used
    when that is not set, matching the Worker's own fallback).
    """

    kind = "worker_r2"
    label = "Cloudflare Worker (R2)"
    cloud = "cloudflare"
    settings = CLOUDFLARE_SETTINGS
    #: the Worker holds the bucket binding itself: before R2's S3 API when both are set
    preference = 1
    #: lifetime of the signature on our own PUT/GET/DELETE requests
    request_ttl: ClassVar[int] = 300
    probe_key: ClassVar[str] = "offload-connection-test/probe"

    @classmethod
    def configured(cls, config: Mapping[str, Any]) -> bool:
        return bool(config.get("cloudflare_worker_url"))

    def __init__(self, config: Mapping[str, Any], *, clock: Callable[[], float] = time.time,
                 http: urllib3.PoolManager | None = None):
        super().__init__(config)
        self.worker_url = _required(config, "worker_url").rstrip("/")
        if urlsplit(self.worker_url).scheme not in ("http", "https"):
            raise PermanentError("worker_url must be an http(s) URL", code="misconfigured")
        self._config = dict(config)
        self.secret = config.get("signing_secret") or config.get("callback_secret") or ""
        if not isinstance(self.secret, str) or not self.secret:
            raise PermanentError("storage setting signing_secret is not set", code="misconfigured")
        self.clock = clock
        self.http = http or pinning.pool_manager(
            retries=False, timeout=urllib3.Timeout(connect=5.0, read=float(config.get("timeout") or 30.0)))

    def signed_url(self, method: str, key: str, expires_in: int, content_sha256: str = "") -> str:
        """``<worker_url>/certificates/<key>?expires=<unix>&sig=<hex>`` for ``method``."""
        check_key(key)
        expires = int(self.clock()) + expires_in
        sig = sign(self.secret, method, key, expires, content_sha256)
        return f"{self.worker_url}/certificates/{quote(key, safe='/')}?expires={expires}&sig={sig}"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Signed PUT; the signature covers the body's SHA-256, which the Worker checks."""
        check_content_type(content_type)
        digest = hashlib.sha256(data).hexdigest()
        url = self.signed_url("PUT", key, self.request_ttl, digest)
        headers = {"content-type": content_type, "x-content-sha256": digest}
        self._request("PUT", url, key, body=data, headers=headers).release_conn()

    def get(self, key: str) -> bytes:
        """Signed GET of the whole object."""
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Signed GET, streamed."""
        url = self.signed_url("GET", key, self.request_ttl)
        response = self._request("GET", url, key, preload_content=False)
        try:
            with _worker_errors(f"Worker get {key}"):
                yield from response.stream(chunk_size)
        finally:
            response.release_conn()

    def presigned_url(self, key: str, expires_in: int) -> str:
        """A download link the Worker honours until ``expires_in`` seconds from now."""
        return self.signed_url("GET", key, check_expiry(expires_in))

    def delete(self, key: str) -> None:
        """Signed DELETE; a missing object is fine."""
        url = self.signed_url("DELETE", key, self.request_ttl)
        try:
            self._request("DELETE", url, key).release_conn()
        except ObjectNotFound:
            return

    def test_connection(self) -> dict:
        """A signed GET of a key that does not exist: only the Worker's own 404 (``not_found``) passes;
        a refusal, an error page or an object where none is (anything answering everything) fails,
        naming the Worker URL."""
        url = self.signed_url("GET", self.probe_key, self.request_ttl)
        try:
            self._request("GET", url, self.probe_key).release_conn()
        except ObjectNotFound as exc:
            if exc.code != "not_found":
                raise not_the_provider(self.label, "cloudflare_worker_url", "no Worker refusal of a missing "
                                       "certificate") from None
            return {"kind": self.kind, "worker_url": self.worker_url, "signature": "accepted"}
        except ProviderError as exc:
            raise for_field(exc, "cloudflare_worker_url") from None
        raise not_the_provider(self.label, "cloudflare_worker_url", "it served a certificate that does not exist")

    def close(self) -> None:
        """Close the pooled connections."""
        self.http.clear()

    def _request(self, method: str, url: str, key: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        """Send one request; map network errors and non-2xx answers to provider errors."""
        what = f"Worker {method} {key}"
        guarded_url(self._config, self.worker_url, "cloudflare")
        with _worker_errors(what):
            response = self._send(method, url, **kwargs)
        if 200 <= response.status < 300:
            return response
        body = response.data if kwargs.get("preload_content", True) else response.read(2048)
        response.release_conn()
        raise worker_http_error(response.status, body, response.headers.get("retry-after"), what)

    def _send(self, method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        """One request, sent again once if a kept-alive connection turns out to be closed.

        The Worker may close a connection after refusing a request whose body it did not read
        (a PUT with a bad signature); when that close races our next request on the same pooled
        connection, the request fails with ``ProtocolError`` before the Worker saw it. PUT, GET
        and DELETE of one key are idempotent, so the one retry, on a new connection, is safe.
        """
        try:
            return self.http.request(method, url, redirect=False, **kwargs)
        except urllib3.exceptions.ProtocolError:
            return self.http.request(method, url, redirect=False, **kwargs)


@contextmanager
def _worker_errors(what: str) -> Iterator[None]:
    """Translate urllib3 exceptions raised in the block into ``providers.base`` errors."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        mapped = urllib3_error(exc, what)
        if mapped is None:
            raise
        raise mapped from exc


def urllib3_error(exc: Exception, what: str) -> ProviderError | None:
    """The ``providers.base`` error for a urllib3 exception, or ``None`` to let it through."""
    errors = urllib3.exceptions
    if isinstance(exc, errors.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, (errors.ConnectTimeoutError, errors.NewConnectionError, errors.NameResolutionError,
                        errors.SSLError, errors.ProxyError)):
        return ConnectionFailure(f"{what}: the Worker {pinning.UNREACHABLE}", code=pinning.UNREACHABLE_CODE)
    if isinstance(exc, (errors.ReadTimeoutError, errors.ProtocolError, errors.IncompleteRead)):
        return RetryableError(f"{what}: the Worker {pinning.UNREACHABLE}", code="network")
    if isinstance(exc, errors.HTTPError):
        return RetryableError(f"{what}: the Worker {pinning.UNREACHABLE}", code="network")
    return None


def worker_http_error(status: int, body: bytes, retry_after: str | None, what: str) -> ProviderError:
    """The ``providers.base`` error for a non-2xx answer from the Worker."""
    code = _error_code(body)
    reason = f"{what}: HTTP {status}" + (f" {code}" if code else "")
    if status == 404:
        return ObjectNotFound(reason, code=code or "http_404")
    if status in (401, 403):
        return PermanentError(reason + " (check the signing secret and clock)", code=code or "forbidden")
    if status == 429:
        return ThrottledError(reason, code="throttled", retry_after=_seconds(retry_after))
    if status >= 500:
        return RetryableError(reason, code=code or f"http_{status}")
    return PermanentError(reason, code=code or f"http_{status}")


#: the codes certificates.js answers; any other body text is the remote's and is never shown
WORKER_ERROR_CODES = frozenset({"method_not_allowed", "not_configured", "bad_key", "unsigned", "bad_signature",
                                "expired", "expiry_too_far", "too_large", "content_sha256_mismatch", "not_found"})


def _error_code(body: bytes) -> str:
    """The ``error`` field of the Worker's JSON error body when it is one of its codes, or ""."""
    try:
        value = json.loads(body or b"{}").get("error", "")
    except (ValueError, AttributeError):
        return ""
    return value if value in WORKER_ERROR_CODES else ""


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` given in seconds, or ``None``."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
