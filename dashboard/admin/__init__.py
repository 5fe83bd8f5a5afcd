"""The Flask-Admin dashboard, built per app so each app gets its own views.

Each feature module (``dashboard/admin/<feature>.py``) has a
``register(admin)`` that adds its views; ``FEATURES`` lists them in menu
order.
"""
from __future__ import annotations

import re

from flask import url_for
from flask_admin import Admin, expose
from flask_admin.theme import Bootstrap4Theme
from flask_login import current_user
from markupsafe import Markup, escape
from sqlalchemy import func, select

from core import labels, overview, reputation, usage
from core.counts import rates
from core.db import db
from core.models import ApiToken, Company, Job, Template
from dashboard import results
from dashboard.admin import (
    audit,
    campaigns,
    certificates,
    companies,
    company_settings,
    csp,
    jobs,
    outbox,
    suppressions,
    templates,
)
from dashboard.admin.base import SecureIndexView, scope
from providers import registry

FEATURES = (jobs, campaigns, templates, certificates, suppressions, company_settings, audit, companies, outbox)


class HomeView(SecureIndexView):
    """The landing page: the user's jobs by status, the first-run checklist, each company's last
    week as charts (sent, failed, bounced, queued; ``core.overview``) and its estimated cloud cost
    this month, to date and projected to the month's end (``core.usage.month``)."""

    @expose("/")
    def index(self):
        if not current_user.is_authenticated:
            return self.inaccessible_callback("index")
        stmt = select(Job.status, func.count()).group_by(Job.status)
        if scope() is not None:
            stmt = stmt.where(Job.company_id == scope())
        counts = dict(db.session.execute(stmt).all())
        return self.render("admin/home.html", counts=counts, rates=rates(scope()), checklists=checklists(),
                           weeks=overview.week(scope()), costs=usage.month(scope()))


def delivery_configured(company: Company) -> bool:
    """Delivery is enabled and the company's provider has what it needs to send (each provider
    says, ``registry.configured``); in offload mode, so has the transport its batches take."""
    s = company.settings
    if s is None or not s.enabled:
        return False
    config = s.provider_config()
    if not registry.configured(registry.SENDER, s.provider, config):
        return False
    transport = registry.offload_transport(config) if s.mode == "offload" else None
    return transport is None or registry.configured(registry.TRANSPORT, transport, config)


def _exists(stmt) -> bool:
    return db.session.execute(stmt.limit(1)).first() is not None


def checklist(company: Company) -> list[dict]:
    """The first-run steps for one company, each with whether it is done and where to do it."""
    settings_url = url_for("settings.company", company_id=company.id)
    return [
        {"label": "Delivery configured", "done": delivery_configured(company),
         "url": settings_url + "#section-general", "hint": "a provider with its credentials, delivery enabled"},
        {"label": "A sender address", "done": bool(company.settings and company.settings.sender),
         "url": settings_url + "#f-sender", "hint": "the From address of every email"},
        {"label": "A template", "done": _exists(Template.scoped(company.id)),
         "url": url_for("templates.create_view"), "hint": "subject and bodies the LMS names in a job"},
        {"label": "An API token", "done": _exists(ApiToken.scoped(company.id).where(ApiToken.revoked_at.is_(None))),
         "url": settings_url + "#tokens", "hint": "what the LMS sends as Authorization: Bearer …"},
        {"label": "A first job", "done": _exists(Job.scoped(company.id)),
         "url": url_for("jobs.index"), "hint": "POST /api/v1/jobs with the token"},
    ]


def checklists(limit: int = 10) -> list[tuple[Company, list[dict]]]:
    """Checklists of the companies in scope that still have a step to do."""
    stmt = select(Company).order_by(Company.id).limit(limit)
    if scope() is not None:
        stmt = stmt.where(Company.id == scope())
    found = []
    for company in db.session.execute(stmt).scalars():
        steps = checklist(company)
        if not all(step["done"] for step in steps):
            found.append((company, steps))
    return found


def reputation_paused() -> list[Company]:
    """The companies in the user's scope whose bulk sending the reputation guard paused (the banner)."""
    if not current_user.is_authenticated:
        return []
    return reputation.tripped(scope())


def label_filter(key, kind: str) -> str:
    """``{{ job.status|label('job_status') }}``: the key's words (``core.labels``)."""
    return labels.label(kind, key)


_VARIABLE = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")


def code_variables(text: str) -> Markup:
    """``text`` escaped, each template variable in it (``{{ unsubscribe_url }}``) shown as code: a name
    to type, not words to read."""
    out, last = [], 0
    for match in _VARIABLE.finditer(text or ""):
        out += [escape(text[last:match.start()]), Markup("<code>"), escape(match.group(0)), Markup("</code>")]
        last = match.end()
    out.append(escape((text or "")[last:]))
    return Markup("").join(out)


def init_app(app) -> None:
    csp.init_app(app)  # Flask-Admin's templates without inline handlers
    # words, not keys, in every template (core.labels)
    app.jinja_env.filters.update(label=label_filter, error_words=labels.error, route_label=labels.route,
                                 code_variables=code_variables)
    app.jinja_env.globals.update(split_category=results.split)  # results beside their buttons
    app.jinja_env.globals.update(reputation_paused=reputation_paused)  # the guard's banner (admin/master.html)
    admin = Admin(app, name="Cloud Offload", url="/admin", index_view=HomeView(url="/admin"),
                  theme=Bootstrap4Theme(swatch="default"))
    for feature in FEATURES:
        feature.register(admin)
