"""Words for the keys a person would otherwise see: the one table from key to words.

Statuses, job types, sources, priorities, modes, recipient error codes,
suppression lists, audit actions, routes and exception names each have the
words a page shows for them (``label(kind, key)``); backend names (``smtp``,
``ses``...) are their registry labels, and a setting's words are the label it
is declared with (``core.delivery_settings``). The API and the CSV exports
keep the keys (they are the contract); the dashboard shows these words, and
``tests/dashboard/test_pages.py`` renders every page to check that no key
gets through. A key missing from its table is shown as words made from it
("some_key" → "Some key"), never as itself.
"""
from __future__ import annotations

import re

from core.models.campaigns import LIST_BOUNCE, LIST_COMPLAINT, LIST_MANUAL, LIST_UNSUBSCRIBE
from core.models.statuses import BatchStatus, JobStatus, JobType, Priority, RecipientStatus
from providers import registry

JOB_STATUS: dict[str, str] = {
    JobStatus.PENDING: "Pending", JobStatus.QUEUED: "Queued", JobStatus.PROCESSING: "Sending",
    JobStatus.COMPLETED: "Completed", JobStatus.PARTIAL: "Partial failure", JobStatus.FAILED: "Failed",
    JobStatus.CANCELLED: "Cancelled", JobStatus.PAUSED: "Paused",
}
RECIPIENT_STATUS: dict[str, str] = {
    RecipientStatus.PENDING: "Waiting", RecipientStatus.SENDING: "Sending", RecipientStatus.SENT: "Sent",
    RecipientStatus.FAILED: "Failed", RecipientStatus.BOUNCED: "Bounced", RecipientStatus.SUPPRESSED: "Suppressed",
    RecipientStatus.UNCERTAIN: "Uncertain", RecipientStatus.CANCELLED: "Cancelled",
}
BATCH_STATUS: dict[str, str] = {
    BatchStatus.PENDING: "Waiting", BatchStatus.QUEUED: "Queued", BatchStatus.SENDING: "Sending",
    BatchStatus.RETRY: "Waiting to retry", BatchStatus.SUBMITTED: "With the cloud worker", BatchStatus.DONE: "Done",
    BatchStatus.FAILED: "Failed", BatchStatus.CANCELLED: "Cancelled",
}
JOB_TYPE: dict[str, str] = {
    JobType.CSV_IMPORT: "New accounts (CSV import)", JobType.LICENSE_ALLOCATION: "License allocation",
    JobType.REENGAGEMENT: "Re-engagement", JobType.NOTIFICATION: "Notification", JobType.CERTIFICATE: "Certificate",
}
PRIORITY: dict[str, str] = {Priority.TRANSACTIONAL: "Transactional", Priority.BULK: "Bulk"}
SOURCE = {"api": "LMS API", "event": "LMS events", "dashboard": "Dashboard", "lms": "IOMAD's email queue",
          "smtp": "SMTP submission"}
MODE = {"direct": "Direct: the service sends", "offload": "Offload: the company's cloud worker sends"}
ROLE = {"admin": "Administrator (every company)", "manager": "Company manager (one company)"}
UNCERTAIN_POLICY = {"resend": "Send them again", "fail": "Mark them failed"}
SMTP_TLS = {"starttls": "STARTTLS (usually port 587)", "tls": "TLS from the start (usually port 465)",
            "none": "None: plain text (a test server only)"}
#: what a recipient's stored error code means (other errors are stored as words already)
RECIPIENT_ERROR = {
    "invalid_email": "Not a valid email address",
    "invalid_recipient": "Not a recipient: expected an object with an email",
    "invalid_data": "Its data is not a set of fields (a JSON object)",
    "duplicate": "The same address is in this job more than once",
}
#: the code a stored error starts with (``render_error: line 2: ...``)
ERROR_PREFIX = {
    "render_error": "The template could not be rendered", "certificate_error": "The certificate could not be made",
    "message_too_large": "The message is too large", "bounce": "Bounced", "certificates": "Certificates",
    "paused": "Paused", "template_error": "Template error",
    "missing_fields": "Not sent: its data lacks fields the mail needs",
}
#: each suppression list: what put an address there and what it stops
SUPPRESSION_LIST = {
    LIST_BOUNCE: "Hard bounce: stops all mail", LIST_COMPLAINT: "Complaint: stops all mail",
    LIST_MANUAL: "Added by hand: stops all mail",
    LIST_UNSUBSCRIBE: "Unsubscribed: stops bulk and re-engagement mail only",
}
ROUTE_KIND = {"direct": "Direct", "fallback": "Fallback", "offload": "Offload"}
AUDIT_ACTION = {
    "api_token_created": "API token created", "api_token_revoked": "API token revoked",
    "batch_retried_now": "Batch retried now", "callback_secret_rotated": "Callback secret rotated",
    "certificate_revoked": "Certificate revoked", "certificate_template_deleted": "Certificate template deleted",
    "certificate_template_saved": "Certificate template saved", "certificates_downloaded": "Certificates downloaded",
    "company_created": "Company created", "connection_test_requested": "Connection test run",
    "demo_seeded": "Demo data created", "events_dropped": "LMS events dropped", "job_cancelled": "Job cancelled",
    "job_created": "Job created", "job_resumed": "Job resumed", "job_retried": "Failed recipients retried",
    "lms_connection_tested": "LMS connection tested", "login": "Signed in", "login_failed": "Sign-in failed",
    "logout": "Signed out", "password_set": "Password set", "settings_changed": "Settings changed",
    "reputation_paused": "Bulk sending paused by the reputation guard",
    "reputation_resumed": "Bulk sending resumed after the reputation guard",
    "suppression_added": "Address suppressed", "suppression_removed": "Suppression removed",
    "template_created": "Template created", "template_deleted": "Template deleted",
    "template_updated": "Template changed", "test_email_requested": "Test email sent",
    "unsubscribed": "Unsubscribed", "user_created": "User created", "user_password_reset": "Password reset",
    "user_unlocked": "User unlocked", "user_updated": "User changed",
}
#: exception names a message may carry (a template error names its type rather than text that could hold data)
EXCEPTION = {
    "TemplateAssertionError": "the template uses a filter or test that does not exist",
    "TemplateSyntaxError": "syntax error", "TemplateRuntimeError": "the template stopped with an error",
    "UndefinedError": "a value the template uses is missing", "SecurityError": "not allowed in a template",
    "TemplateNotFound": "the template includes another template, which templates may not do",
    "TypeError": "a value of the wrong type", "ValueError": "a value that does not fit",
    "ZeroDivisionError": "a division by zero", "OverflowError": "a number too large",
    "KeyError": "a missing key", "IndexError": "a list index out of range", "AttributeError": "a missing attribute",
    "RecursionError": "too deeply nested", "MemoryError": "too much memory",
}

#: a template's parts, as the template form names them ("body": the text and HTML bodies together)
TEMPLATE_PART = {"subject": "Subject", "body_text": "Text body", "body_html": "HTML body", "body": "Body"}
#: the renderer's messages that name parts by their keys
TEMPLATE_MESSAGE = {"body_text or body_html is required": "a text body or an HTML body is required"}

TABLES: dict[str, dict[str, str]] = {
    "job_status": JOB_STATUS, "recipient_status": RECIPIENT_STATUS, "batch_status": BATCH_STATUS,
    "job_type": JOB_TYPE, "priority": PRIORITY, "source": SOURCE, "mode": MODE, "role": ROLE,
    "uncertain_policy": UNCERTAIN_POLICY, "smtp_tls": SMTP_TLS, "recipient_error": RECIPIENT_ERROR,
    "error_prefix": ERROR_PREFIX, "suppression_list": SUPPRESSION_LIST,
    "audit_action": AUDIT_ACTION, "exception": EXCEPTION, "template_part": TEMPLATE_PART,
}
_EXCEPTION_NAME = re.compile(r"\b(" + "|".join(EXCEPTION) + r")\b")


def humanize(key: str) -> str:
    """Words made from a key no table knows: ``"some_key"`` → ``"Some key"``."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def label(kind: str, key) -> str:
    """The words for ``key`` of ``kind`` (a table of ``TABLES``, or a backend kind of the registry)."""
    if key is None or key == "":
        return ""
    if kind in registry.KINDS:
        return backend(kind, str(key))
    return TABLES[kind].get(str(key)) or humanize(str(key))


def backend(kind: str, name: str) -> str:
    """A sender's, transport's or storage's label (``smtp`` → ``SMTP``, ``aws`` → ``Amazon SES``)."""
    return registry.label(kind, name) if registry.find(kind, name) is not None else humanize(name)


def route(value: str | None) -> str:
    """A route (``direct:smtp``, ``offload:sqs``, ``fallback:smtp (circuit open)``) in words."""
    if not value:
        return ""
    head, _, rest = str(value).partition(" ")
    kind, sep, name = head.partition(":")
    if not sep or kind not in ROUTE_KIND:
        return str(value)
    backend_kind = registry.TRANSPORT if kind == "offload" else registry.SENDER
    return f"{ROUTE_KIND[kind]} · {backend(backend_kind, name)}" + (f" {rest}" if rest else "")


def error(text: str | None) -> str:
    """A recipient's or batch's stored error in words: its code's, else the text with exception names as words."""
    if not text:
        return ""
    text = str(text)
    if text in RECIPIENT_ERROR:
        return RECIPIENT_ERROR[text]
    code, sep, rest = text.partition(": ")
    if sep and code in ERROR_PREFIX:
        text = f"{ERROR_PREFIX[code]}: {rest}"
    return exception_words(text)


def exception_words(text: str) -> str:
    """``text`` with every exception name it has replaced by its words."""
    return _EXCEPTION_NAME.sub(lambda m: EXCEPTION[m.group(1)], text)


def template_error(part: str, message: str) -> str:
    """A template's compile or render error (``RenderError``'s part and message) as the dashboard shows it:
    the part by its form label, exception names as words (the API keeps ``body_text: ...``)."""
    return f"{label('template_part', part)}: {TEMPLATE_MESSAGE.get(message) or exception_words(message)}"
