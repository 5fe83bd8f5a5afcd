"""The Flask-Admin dashboard: built per app, so each app gets its own views."""
from __future__ import annotations

from flask_admin import Admin, expose
from flask_admin.theme import Bootstrap4Theme
from flask_login import current_user
from sqlalchemy import func, select

from dashboard.admin.base import AdminModelView, SecureIndexView, TenantModelView, scope
from dashboard.extensions import db
from dashboard.models import AuditLog, Company, Job, Template, User


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
        return self.render("admin/home.html", counts=counts)


class JobListView(TenantModelView):
    can_create = can_edit = can_delete = False
    can_view_details = True
    column_list = ("id", "type", "status", "email_count", "emails_sent", "emails_failed", "created_at")
    column_default_sort = ("id", True)
    column_filters = ("status", "type")
    column_details_exclude_list = ("idempotency_key",)


class TemplateView(TenantModelView):
    column_list = ("name", "job_type", "subject", "updated_at")
    form_columns = ("name", "job_type", "subject", "body_text", "body_html")


class AuditView(TenantModelView):
    can_create = can_edit = can_delete = False
    column_list = ("created_at", "actor", "action", "object_type", "object_id", "ip")
    column_default_sort = ("id", True)

    def get_query(self):
        company = scope()
        query = self.session.query(self.model)
        return query if company is None else query.filter(self.model.company_id == company)

    def get_count_query(self):
        company = scope()
        query = self.session.query(func.count(self.model.id))
        return query if company is None else query.filter(self.model.company_id == company)


class CompanyView(AdminModelView):
    column_list = ("id", "name", "created_at")
    form_columns = ("name",)
    column_exclude_list = ("callback_secret", "callback_secret_previous", "moodle_db_url")


class UserView(AdminModelView):
    column_list = ("email", "role", "company", "active", "last_login_at", "locked_until")
    form_columns = ("email", "role", "company", "active")


def init_app(app) -> None:
    admin = Admin(app, name="Cloud Offload", url="/admin", index_view=HomeView(url="/admin"),
                  theme=Bootstrap4Theme(swatch="default"))
    admin.add_view(JobListView(Job, db.session, name="Jobs", endpoint="jobs"))
    admin.add_view(TemplateView(Template, db.session, name="Templates", endpoint="templates"))
    admin.add_view(AuditView(AuditLog, db.session, name="Audit log", endpoint="audit"))
    admin.add_view(CompanyView(Company, db.session, name="Companies", endpoint="companies"))
    admin.add_view(UserView(User, db.session, name="Users", endpoint="users"))
