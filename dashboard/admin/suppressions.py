"""The suppression lists per company: search, add, remove, export (CSV), with
the company's bounce and complaint rates (``dashboard.bounces.rates``). Each
entry says which list it is on and what that list stops. The list is newest
first in keyset pages (``?before=`` the last id shown), searched by text
anywhere in the address."""
from __future__ import annotations

from flask import abort, redirect, request, url_for
from flask_admin import expose
from sqlalchemy import func, select

from core import audit, labels
from core.counts import rates
from core.db import db
from core.models import LIST_MANUAL, Company, Suppression
from core.recipient_list import like_escaped
from core.rendering import valid_email
from core.suppressions import normalize_email, suppress
from core.tenancy import get_or_404
from dashboard.admin.base import SecureBaseView, scope
from dashboard.csvexport import csv_response

PAGE_SIZE = 100
#: each list in words: what put an address there and what it stops
LIST_WORDS = labels.SUPPRESSION_LIST


def company_or_404(raw) -> Company:
    """The company an admin picked in a form (companies are not tenant rows)."""
    company = db.session.get(Company, int(raw)) if str(raw).isdigit() else None
    if company is None:
        abort(404)
    return company


def company_filter() -> int | None:
    """The company to show: the manager's own, or the one an admin picked (``None``: all)."""
    if scope() is not None:
        return scope()
    raw = request.values.get("company_id", "")
    return company_or_404(raw).id if raw else None


def search(company_id: int | None, q: str):
    stmt = Suppression.scoped(company_id)
    if q:
        stmt = stmt.where(Suppression.email.like(f"%{like_escaped(q.lower())}%", escape="\\"))
    return stmt


def cursor(raw: str) -> int | None:
    """The ``before`` id of a keyset page (``None``: the newest page)."""
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


class SuppressionsView(SecureBaseView):
    """Addresses a company never sends to (unsubscribes, bounces, complaints, manual)."""

    @expose("/")
    def index(self):
        return self.page()

    def page(self, error: str | None = None, typed: str = "", status: int = 200):
        company_id = company_filter()
        q = request.args.get("q", "").strip()[:320]
        before = cursor(request.args.get("before", ""))
        stmt = search(company_id, q)
        total = db.session.execute(select(func.count()).select_from(stmt.subquery())).scalar()
        if before is not None:
            stmt = stmt.where(Suppression.id < before)
        rows = db.session.execute(stmt.order_by(Suppression.id.desc()).limit(PAGE_SIZE + 1)).scalars().all()
        older = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
        companies = dict(db.session.execute(select(Company.id, Company.name)).all()) if scope() is None else {}
        html = self.render("campaigns/suppressions.html", rows=rows[:PAGE_SIZE], total=total, q=q, before=before,
                           older=older, company_id=company_id, companies=companies,
                           rates=rates(company_id), error=error, typed=typed, list_words=LIST_WORDS)
        return html, status

    @expose("/add", methods=["POST"])
    def add(self):
        company_id = company_filter()
        email = normalize_email(request.form.get("email", ""))
        if company_id is None:
            return self.page("choose a company", email, 400)
        if not valid_email(email):
            return self.page("that is not a valid email address", request.form.get("email", "")[:320], 400)
        if suppress(company_id, email, LIST_MANUAL):
            audit.record("suppression_added", company_id=company_id, object_type="suppression",
                         details={"reason": LIST_MANUAL})
            db.session.commit()
        return redirect(url_for(".index", company_id=company_id if scope() is None else None))

    @expose("/<int:suppression_id>/delete", methods=["POST"])
    def delete(self, suppression_id: int):
        row = get_or_404(Suppression, suppression_id, scope())
        company_id = row.company_id
        db.session.delete(row)
        audit.record("suppression_removed", company_id=company_id, object_type="suppression",
                     object_id=suppression_id, details={"reason": row.reason})
        db.session.commit()
        return redirect(url_for(".index", company_id=company_id if scope() is None else None))

    @expose("/export.csv")
    def export(self):
        company_id = company_filter()
        stmt = search(company_id, request.args.get("q", "").strip()[:320]).order_by(Suppression.id)
        rows = ((r.email, r.reason, r.created_at, r.company_id) for r in db.session.execute(stmt).scalars())
        return csv_response("suppressions.csv", ["email", "reason", "created_at", "company_id"], rows)


def register(admin) -> None:
    admin.add_view(SuppressionsView(name="Suppressions", endpoint="suppressions", url="/admin/suppressions"))
