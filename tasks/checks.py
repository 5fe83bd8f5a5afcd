"""RQ jobs behind the settings page's "Test connection" and "Send test email".

The web side queues them through ``core.checks`` with the company id and a
check id only; what else a job needs waits in Redis under the check id. Each
job stores a secret-free result there for the page to poll.
"""
from __future__ import annotations

import json
import logging
import re
import time

from core import delivery_settings
from core.certificates import StorageNotConfigured, configured_kind, open_storage
from core.checks import RESULT_TTL_S, read_request, request_key, result_key
from core.db import db
from core.models import Company, Template
from core.queue import connection
from core.rendering import PREVIEW_BUDGET_S, CompiledTemplate, RenderError
from providers import Message, ProviderError, ResultStatus, get_provider, registry
from providers.offload import get_transport

log = logging.getLogger(__name__)

_TAGS = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")


def provider_config(company: Company) -> dict:
    """The company's settings as provider config.

    An ``aws_endpoint_url`` names one endpoint for every AWS service the
    company uses (SES and SQS, e.g. LocalStack or moto), so STS is asked
    there too; a note explains it when that endpoint does not answer STS.
    """
    config = company.settings.provider_config() if company.settings else {}
    if config.get("aws_endpoint_url"):
        config.setdefault("aws_sts_endpoint_url", config["aws_endpoint_url"])
    if config.get("offload_url"):  # the HTTPS transport signs with it (never part of a result)
        config["callback_secret"] = company.callback_secret
    return config


def clean_reason(text) -> str:
    """A short one-line reason: HTML tags (error pages) removed, whitespace collapsed."""
    return _SPACES.sub(" ", _TAGS.sub(" ", str(text))).strip()[:300]


def redact(payload: dict, config: dict) -> dict:
    """``payload`` with every secret value of ``config`` replaced (belt and braces)."""
    text = json.dumps(payload)
    for key in delivery_settings.secret_keys():
        value = config.get(key)
        if value and len(str(value)) >= 4:
            text = text.replace(json.dumps(str(value))[1:-1], "[redacted]")
    return json.loads(text)


def _store(company_id: int, check_id: str, payload: dict, config: dict) -> None:
    payload = redact(payload, config)
    connection().set(result_key(company_id, check_id), json.dumps(payload), ex=RESULT_TTL_S)


def fix_for(key: str | None) -> dict:
    """Where to fix a failed check: the setting's key, its label and the form field's anchor."""
    setting = delivery_settings.by_key().get(key or "")
    if setting is None:
        return {"field": None, "field_label": None, "fix": None}
    return {"field": setting.key, "field_label": setting.label, "fix": f"#f-{setting.key}"}


def _check(name: str, run) -> dict:
    """Run one ``test_connection``; a provider error is the check's answer, not a job failure. It
    passes only when the backend's test returned (its provider's own answer); a failure says why in
    words and names the setting to fix (``fix_for``)."""
    started = time.monotonic()
    try:
        facts = run()
    except ProviderError as exc:
        return {"name": name, "ok": False, "error": clean_reason(exc.reason), "facts": {}, "notes": [],
                **fix_for(exc.field), "seconds": round(time.monotonic() - started, 2)}
    except Exception as exc:  # noqa: BLE001 - a check always ends with a result, never "pending"
        # the type only, in the log: botocore's ResponseParserError (and others) quote the remote body
        log.warning("%s check failed unexpectedly: %s", name, type(exc).__name__)
        return {"name": name, "ok": False, "error": "the test met an unexpected error (the service log has its "
                "type)", "facts": {}, "notes": [], **fix_for(None), "seconds": round(time.monotonic() - started, 2)}
    notes = [clean_reason(n) for n in facts.pop("notes", [])] + [clean_reason(w) for w in facts.pop("warnings", [])]
    return {"name": name, "ok": True, "error": None, "facts": facts, "notes": notes,
            "seconds": round(time.monotonic() - started, 2)}


def _provider_test(name: str, config: dict):
    def run():
        with get_provider(name, config) as provider:
            return provider.test_connection()
    return run


def _transport_test(name: str, config: dict):
    def run():
        with get_transport(name, config) as transport:
            return transport.test_connection()
    return run


def planned_checks(config: dict) -> list[tuple[str, object]]:
    """Which checks the settings call for: the provider, the offload queue, the SMTP fallback."""
    fallback = registry.fallback_sender()
    provider = config.get("provider") or fallback
    checks = [(registry.label(registry.SENDER, provider), _provider_test(provider, config))]
    way = registry.offload_transport(config)  # as core.delivery.submit routes a batch
    transport = registry.find(registry.TRANSPORT, way) if way else None
    if way and transport is not None and (config.get("mode") == "offload" or config.get(transport.queue_setting)):
        checks.append((registry.label(registry.TRANSPORT, way), _transport_test(way, config)))
    if provider != fallback and registry.configured(registry.SENDER, fallback, config):
        checks.append((f"{registry.label(registry.SENDER, fallback)} fallback", _provider_test(fallback, config)))
    return checks


def _in_group(kind: str, section: str) -> list[str]:
    """The backends of ``kind`` whose settings are the group ``section``."""
    return [name for name in registry.names(kind)
            if getattr(registry.backend(kind, name).settings, "name", None) == section]


def section_checks(company: Company, config: dict, section: str) -> list[dict]:
    """A settings section's own test: every sender that reads its group, the offload transport
    when its queue is set, and the certificate storage when it is configured."""
    checks = [_check(registry.label(registry.SENDER, n), _provider_test(n, config))
              for n in _in_group(registry.SENDER, section)]
    checks += [_check(registry.label(registry.TRANSPORT, n), _transport_test(n, config))
               for n in _in_group(registry.TRANSPORT, section)
               if config.get(registry.backend(registry.TRANSPORT, n).queue_setting)]
    checks += [found for n in _in_group(registry.STORAGE, section)
               if registry.configured(registry.STORAGE, n, config) and (found := _storage_check(company, n))]
    if not checks:
        title = next((g.title for g in registry.settings_groups() if g.name == section), section)
        return [{"name": title, "ok": False, "error": "nothing in this section is set up yet: fill it in and save "
                 "it first", "facts": {}, "notes": []}]
    return checks


def _storage_check(company: Company, kind: str | None = None) -> dict | None:
    """Whichever certificate storage the settings choose (or ``kind``; a bucket must exist), or ``None``."""
    try:
        kind = kind or configured_kind(company)
    except StorageNotConfigured:
        return None

    def run():
        with open_storage(company, kind) as storage:
            return storage.test_connection()
    return _check(f"Certificate storage: {registry.label(registry.STORAGE, kind)}", run)


def run_connection_test(company_id: int, check_id: str) -> None:
    """RQ job: test the company's delivery settings and store the result."""
    company = db.session.get(Company, company_id)
    if company is None:
        return
    config = provider_config(company)
    section = read_request(company_id, check_id).get("section")
    if section:
        results = section_checks(company, config, section)
    else:
        results = [_check(name, run) for name, run in planned_checks(config)]
        storage = _storage_check(company)
        if storage is not None:
            results.append(storage)
    ok = bool(results) and all(r["ok"] for r in results)
    log.info("Company %s: connection test %s: %s", company_id, check_id[:6], "ok" if ok else "problems")
    _store(company_id, check_id, {"status": "done", "kind": "connection", "ok": ok, "checks": results,
                                  "provider": config.get("provider"), "mode": config.get("mode")}, config)


def _test_content(company_id: int, request: dict) -> tuple[str, str | None, str | None]:
    """Subject, text and HTML of the test message (a stored template, or a fixed note)."""
    if request.get("template_id"):
        tpl = db.session.execute(Template.scoped(company_id).where(Template.id == int(request["template_id"])))\
            .scalar_one_or_none()
        if tpl is None:
            raise RenderError("template", "the template no longer exists")
        rendered = CompiledTemplate(tpl.subject, tpl.body_text, tpl.body_html).render(
            request.get("sample") or {}, budget_s=PREVIEW_BUDGET_S)
        return "[TEST] " + rendered.subject, rendered.text, rendered.html
    return ("Test email from ManiReports Cloud Offload",
            "This is a test message sent from the Cloud Offload dashboard to check the delivery settings.",
            None)


def send_test_email(company_id: int, check_id: str) -> None:
    """RQ job: send one test message with the company's provider and store the outcome."""
    company = db.session.get(Company, company_id)
    conn = connection()
    raw = conn.get(request_key(company_id, check_id))
    conn.delete(request_key(company_id, check_id))
    if company is None:
        return
    config = provider_config(company)
    payload = {"status": "done", "kind": "email", "ok": False, "provider": config.get("provider")}
    if raw is None:
        _store(company_id, check_id, {**payload, "error": "the request expired; try again"}, config)
        return
    request = json.loads(raw)
    sender = config.get("sender")
    if not sender:
        _store(company_id, check_id, {**payload, "error": "no sender address is configured"}, config)
        return
    try:
        subject, text, html = _test_content(company_id, request)
        message = Message(key=0, to=request["to"], subject=subject, text=text, html=html)
        with get_provider(config.get("provider") or registry.fallback_sender(), config) as provider:
            result = provider.send(sender, [message])[0]
    except (ProviderError, RenderError) as exc:
        reason = exc.reason if isinstance(exc, ProviderError) else str(exc)
        _store(company_id, check_id, {**payload, "error": clean_reason(reason)}, config)
        return
    except Exception as exc:  # noqa: BLE001 - the page gets a result, the log no remote text
        log.warning("Company %s: test email failed unexpectedly: %s", company_id, type(exc).__name__)
        _store(company_id, check_id, {**payload, "error": f"unexpected error ({type(exc).__name__})"}, config)
        return
    ok = result.status == ResultStatus.SENT
    log.info("Company %s: test email %s: %s", company_id, check_id[:6], result.status)
    _store(company_id, check_id, {**payload, "ok": ok, "message_id": result.message_id,
                                  "error": None if ok else clean_reason(result.error or result.status)}, config)
