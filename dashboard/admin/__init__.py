"""The Flask-Admin dashboard, built per app so each app gets its own views.

Each feature module (``dashboard/admin/<feature>.py``) has a
``register(admin)`` that adds its views; ``FEATURES`` lists them in menu
order.
"""
from __future__ import annotations

from flask_admin import Admin, expose
from flask_admin.theme import Bootstrap4Theme
from flask_login import current_user
from sqlalchemy import func, select

from dashboard.admin import (audit, campaigns, certificates, companies, company_settings, jobs, outbox,
                             suppressions, templates)
from dashboard.admin.base import SecureIndexView, scope
from core.suppressions import rates
from core.db import db
from core.models import Job

FEATURES = (jobs, campaigns, templates, certificates, suppressions, company_settings, audit, companies, outbox)


class HomeView(SecureIndexView):
    """The landing page: counts of the user's jobs by status."""

    @expose("/")
    def index(self):
        if not current_user.is_authenticated:
            return self.inaccessible_callback("index")
        stmt = select(Job.status, func.count()).group_by(Job.status)
        if scope() is not None:
            stmt = stmt.where(Job.company_id == scope())
        counts = dict(db.session.execute(stmt).all())
        return self.render("admin/home.html", counts=counts, rates=rates(scope()))


def init_app(app) -> None:
    admin = Admin(app, name="Cloud Offload", url="/admin", index_view=HomeView(url="/admin"),
                  theme=Bootstrap4Theme(swatch="default"))
    for feature in FEATURES:
        feature.register(admin)
