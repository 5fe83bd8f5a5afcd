"""What IOMAD's own email task would do with a row of its ``email`` table
(``\\local_iomad\\task\\email_cron_task`` and ``emailtemplate::send_to_user``
of local_iomad / local_email), so that the take-over does the same.

- **Which rows** (``due_ids_sql``): ``sent IS NULL AND due < now``, the row's
  user not deleted and not suspended; ``company_suspended`` rows also for
  suspended users; ``userid = -999`` rows (the shop administrator) when the
  site has a ``commerce_admin_email``. Other rows (unknown, deleted or
  suspended users) are left untouched, as IOMAD leaves them.
- **The site's settings** (``read_site``), where IOMAD reads them: Moodle's
  ``config`` table (``$CFG``): ``siteadmins`` (``is_siteadmin``),
  ``commerce_admin_email`` / ``_firstname`` / ``_lastname``,
  ``companyemailprofileid``.
- **Reply-To** (``reply_to``): the template's own ``reply-to:`` line of the
  headers wins; else the row's ``senderid`` when it is a user who is not a
  site administrator (IOMAD's ``!is_siteadmin``) and not deleted.
- **Copies** (``Copies``): the template object's ``emailto``/``emailcc`` users
  (active ones) and ``emailtoother``/``emailccother`` addresses; for IOMAD's
  user templates (``USER_TEMPLATES``) also the learner's company managers
  (``company_users.managertype = 1`` in the learner's department in the row's
  company, its first ``company_users`` row there, or one above it, unless the
  template has ``disabledmanager``) and supervisors (the
  addresses in the profile field ``company.emailprofileid``, else
  ``$CFG->companyemailprofileid``, unless ``disabledsupervisor``). One message
  per address and row: an address already getting the row gets no copy.
  Lookups are batched per chunk of rows, and the per-company ones (managers,
  departments, profile fields) made once per poll.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, bindparam, text

from core.lms.connection import TASK_NAMES, LmsConfig
from core.models.lms import COPY_CC, COPY_MANAGER, COPY_SUPERVISOR, COPY_TO
from core.rendering import valid_email

#: ``email.userid`` of rows meant for the shop administrator
SHOP_ADMIN = -999
#: the template IOMAD sends to suspended users too
COMPANY_SUSPENDED = "company_suspended"
#: ``company_users.managertype`` of the managers ``get_my_managers`` copies (company managers)
COMPANY_MANAGER = 1
#: IOMAD's ``is_user_template``: the templates whose rows managers and supervisors get copies of
USER_TEMPLATES = frozenset((
    "completion_course_user", "course_not_started_warning", "completion_warn_user", "expiry_warn_user",
    "license_allocated", "license_removed", "password_update", "user_added_to_course", "user_create",
    "user_deleted", "user_programcompleted", "user_promoted", "user_removed_from_event", "user_reset",
    "user_signed_up_for_event", "user_signed_up_to_waitlist", "user_suspended", "user_unsuspended"))
#: IOMAD's purge: rows whose ``modifiedtime`` is older than this and that are due are deleted
PURGE_AGE_S = 6 * 30 * 24 * 60 * 60
SITE_KEYS = ("siteadmins", "commerce_admin_email", "companyemailprofileid")


@dataclass(frozen=True)
class Site:
    """The Moodle site's settings IOMAD's sending reads."""

    siteadmins: frozenset[int] = frozenset()
    shop_admin: str | None = None
    supervisor_field: int | None = None
    #: IOMAD's own email task is enabled (it would send the same queue)
    task_enabled: bool = False


def _int(value) -> int | None:
    text_ = str(value or "").strip()
    return int(text_) if text_.lstrip("-").isdigit() else None


def read_site(conn, cfg: LmsConfig) -> Site:
    """One query: the ``$CFG`` values of ``SITE_KEYS`` and whether IOMAD's own email task is enabled."""
    stmt = text(f"SELECT t.disabled, c.name, c.value FROM (SELECT 1 AS one) x "
                f"LEFT JOIN {cfg.table('task_scheduled')} t ON t.classname IN (:task_a, :task_b) "
                f"LEFT JOIN {cfg.table('config')} c ON c.name IN :names").bindparams(
        bindparam("names", expanding=True))
    found = conn.execute(stmt, {"names": list(SITE_KEYS), **TASK_NAMES}).all()
    rows = {r.name: r.value for r in found if r.name is not None}
    admins = frozenset(i for i in (_int(v) for v in str(rows.get("siteadmins") or "").split(",")) if i)
    shop = (rows.get("commerce_admin_email") or "").strip()
    field_id = _int(rows.get("companyemailprofileid"))
    enabled = any(r.disabled is not None and int(r.disabled) == 0 for r in found)
    return Site(admins, shop if valid_email(shop) else None, field_id if field_id and field_id > 0 else None,
                enabled)


@dataclass(frozen=True)
class Scope:
    """Which IOMAD companies' rows a company takes: its own, and for the site queue every
    company no other company of the service maps (``companyid = 0`` included)."""

    own: int | None
    site_queue: bool = False
    mapped_elsewhere: tuple[int, ...] = ()

    def sql(self) -> str:
        own = f"e.companyid = {int(self.own)}" if self.own else None
        if not self.site_queue:
            return own or "1 = 0"
        others = ", ".join(str(int(i)) for i in sorted(set(self.mapped_elsewhere) - {self.own}))
        orphans = f"e.companyid NOT IN ({others})" if others else "1 = 1"
        return f"({own} OR {orphans})" if own else orphans

    def takes(self, companyid: int) -> bool:
        if self.own and companyid == self.own:
            return True
        return self.site_queue and companyid not in set(self.mapped_elsewhere)


def due_ids_sql(cfg: LmsConfig, scope: Scope, site: Site, limit: int) -> str:
    """The ids of the rows IOMAD's task would send now, oldest first, after ``:after``."""
    active = f"(u.deleted = 0 AND (u.suspended = 0 OR e.templatename = '{COMPANY_SUSPENDED}'))"
    who = f"({active} OR e.userid = {SHOP_ADMIN})" if site.shop_admin else active
    return (f"SELECT e.id FROM {cfg.table('email')} e LEFT JOIN {cfg.table('user')} u ON u.id = e.userid "
            f"WHERE e.sent IS NULL AND e.due < :now AND e.id > :after AND {scope.sql()} AND {who} "
            f"ORDER BY e.id LIMIT {int(limit)}")


def _row_columns(cfg: LmsConfig) -> str:
    """A row with its user, its sender, and its user's department in the row's company (IOMAD reads one)."""
    return (f"e.id, e.templatename, e.subject, e.body, e.varsreplaced, e.userid, e.senderid, e.headers, "
            f"e.companyid, u.id AS uid, u.email AS uemail, u.deleted AS udeleted, u.suspended AS ususpended, "
            f"s.email AS semail, s.deleted AS sdeleted, (SELECT cu.departmentid FROM {cfg.table('company_users')} cu "
            f"WHERE cu.userid = e.userid AND cu.companyid = e.companyid ORDER BY cu.id LIMIT 1) AS udept "
            f"FROM {cfg.table('email')} e LEFT JOIN {cfg.table('user')} u ON u.id = e.userid "
            f"LEFT JOIN {cfg.table('user')} s ON s.id = e.senderid ")


def rows_sql(cfg: LmsConfig) -> str:
    """The rows of ``:ids``."""
    return f"SELECT {_row_columns(cfg)} WHERE e.sent IS NULL AND e.id IN :ids ORDER BY e.id"


def due_rows_sql(cfg: LmsConfig, scope: Scope, site: Site, limit: int) -> str:
    """The due rows themselves (``due_ids_sql``'s, whole): for a scan of rows never seen before."""
    ids = due_ids_sql(cfg, scope, site, limit)
    return f"SELECT {_row_columns(cfg)}" + ids[ids.index(" WHERE "):]


def purge_sql(cfg: LmsConfig, scope: Scope) -> str:
    """IOMAD's purge (``modifiedtime < now - 180 days AND due < now``), for the rows the company takes."""
    return (f"DELETE FROM {cfg.table('email')} WHERE modifiedtime < :before AND due < :now AND "
            + scope.sql().replace("e.companyid", "companyid"))


# -- one row's headers --------------------------------------------------------------------
def template_of(headers: dict) -> dict:
    """The template object ``queue_for_cron`` stored in the headers (``{}`` when there is none)."""
    found = headers.get("template")
    return found if isinstance(found, dict) else {}


def header_lines(headers: dict, prefix: str) -> list[str]:
    """The addresses of the headers' ``To:``/``Cc:``/``reply-to:`` lines (case-insensitive prefix)."""
    out = []
    for key, value in headers.items():
        if isinstance(key, int) and isinstance(value, str) and value.lower().startswith(prefix):
            address = value.split(":", 1)[1].strip()
            if valid_email(address):
                out.append(address)
    return out


def reply_to(row, headers: dict, site: Site) -> str | None:
    """The template's ``reply-to:`` line, else a sender who is not a site administrator."""
    lines = header_lines(headers, "reply-to:")
    if lines:
        return lines[0]
    sender = (row.semail or "").strip()
    if row.senderid and int(row.senderid) > 0 and int(row.senderid) not in site.siteadmins \
            and not int(row.sdeleted or 0) and valid_email(sender):
        return sender
    return None


def _ids(value) -> list[int]:
    return [i for i in (_int(v) for v in str(value or "").split(",")) if i and i > 0]


def _addresses(value) -> list[str]:
    return [a.strip() for a in str(value or "").split(",") if valid_email(a.strip())]


def _set(value) -> bool:
    """PHP's ``!empty()`` of a template flag."""
    return value not in (None, "", "0", 0, False)


# -- copies ----------------------------------------------------------------------------------
@dataclass
class Wanted:
    """What one row's copies need: its learner and company, its template's lists."""

    row_id: int
    learner: int
    company: int
    department: int | None
    to_ids: list[int]
    cc_ids: list[int]
    to_other: list[str]
    cc_other: list[str]
    managers: bool
    supervisors: bool


def _lists(headers: dict) -> tuple:
    """The template's lists and switches: to ids, cc ids, to addresses, cc addresses, managers, supervisors."""
    tpl = template_of(headers)
    return (_ids(tpl.get("emailto")), _ids(tpl.get("emailcc")), _addresses(tpl.get("emailtoother")),
            _addresses(tpl.get("emailccother")), not _set(tpl.get("disabledmanager")),
            not _set(tpl.get("disabledsupervisor")))


def wanted(row, headers: dict, memo: dict | None = None) -> Wanted:
    """What the row's copies need. ``memo``: the poll's memo, where the lists of each decoded headers are
    kept too (by the headers' identity: the memo returns the same dict for the same text)."""
    key = ("lists", id(headers))
    lists = memo.get(key) if memo is not None else None
    if lists is None or lists[0] is not headers:
        lists = (headers, _lists(headers))
        if memo is not None:
            memo[key] = lists
    to_ids, cc_ids, to_other, cc_other, managers, supervisors = lists[1]
    user_template = (row.templatename or "") in USER_TEMPLATES and int(row.userid) > 0
    return Wanted(int(row.id), int(row.userid), int(row.companyid), _int(row.udept), to_ids, cc_ids, to_other,
                  cc_other, user_template and managers, user_template and supervisors)


@dataclass
class Copies:
    """Resolves the copies of a poll's rows, batching the lookups (see the module's docstring)."""

    conn: Connection
    cfg: LmsConfig
    site: Site
    queries: int = 0
    #: the poll's decoded headers, by their text (``core.lms.email_queue._headers``)
    memo: dict = field(default_factory=dict)
    _parents: dict[int, int] = field(default_factory=dict)  # department -> parent (every company seen)
    _managers: dict[int, list[tuple[int, int, str]]] = field(default_factory=dict)  # company -> (dept, user, email)
    _fields: dict[int, int | None] = field(default_factory=dict)  # company -> its supervisor profile field

    def _run(self, sql: str, **params) -> Sequence[Row[Any]]:
        stmt = text(sql)
        expanding = [k for k, v in params.items() if isinstance(v, list)]
        if expanding:
            stmt = stmt.bindparams(*(bindparam(k, expanding=True) for k in expanding))
        self.queries += 1
        return self.conn.execute(stmt, params).all()

    def resolve(self, wants: Iterable[Wanted]) -> dict[int, list[tuple[str, str]]]:
        """Row id -> [(address, kind)], in IOMAD's order: to, cc, to-other, cc-other, managers, supervisors."""
        wants = list(wants)
        users = self._users({i for w in wants for i in w.to_ids + w.cc_ids})
        staff = [w for w in wants if w.managers or w.supervisors]
        self._load_companies({w.company for w in staff})
        supervisors = self._supervisors([w for w in staff if w.supervisors])
        out = {}
        for w in wants:
            found = [(users[i], COPY_TO) for i in w.to_ids if i in users]
            found += [(users[i], COPY_CC) for i in w.cc_ids if i in users]
            found += [(a, COPY_TO) for a in w.to_other] + [(a, COPY_CC) for a in w.cc_other]
            if w.managers:
                found += [(a, COPY_MANAGER) for a in self._managers_of(w)]
            if w.supervisors:
                found += [(a, COPY_SUPERVISOR) for a in supervisors.get(w.learner, [])]
            out[w.row_id] = found
        return out

    def _users(self, ids: set[int]) -> dict[int, str]:
        if not ids:
            return {}
        rows = self._run(f"SELECT id, email FROM {self.cfg.table('user')} WHERE id IN :ids AND deleted = 0 "
                         "AND suspended = 0", ids=sorted(ids))
        return {int(r.id): r.email.strip() for r in rows if valid_email((r.email or "").strip())}

    def _load_companies(self, companies: set[int]) -> None:
        """Once per company a poll sees: its departments' parents, its company managers, its profile field."""
        new = sorted(companies - set(self._fields))
        if not new:
            return
        for r in self._run(f"SELECT id, emailprofileid FROM {self.cfg.table('company')} WHERE id IN :ids", ids=new):
            self._fields[int(r.id)] = _int(r.emailprofileid) or None
        for c in new:
            self._fields.setdefault(c, None)
            self._managers.setdefault(c, [])
        for r in self._run(f"SELECT id, parent FROM {self.cfg.table('department')} WHERE company IN :ids", ids=new):
            self._parents[int(r.id)] = int(r.parent or 0)
        for r in self._run(f"SELECT cu.companyid, cu.departmentid, cu.userid, u.email "
                           f"FROM {self.cfg.table('company_users')} cu JOIN {self.cfg.table('user')} u "
                           f"ON u.id = cu.userid WHERE cu.companyid IN :ids AND cu.managertype = {COMPANY_MANAGER} "
                           "AND u.deleted = 0 AND u.suspended = 0", ids=new):
            if valid_email((r.email or "").strip()):
                self._managers[int(r.companyid)].append((int(r.departmentid), int(r.userid), r.email.strip()))

    def _managers_of(self, w: Wanted) -> list[str]:
        dept, seen = w.department, set()
        while dept and dept not in seen:  # the department and every one above it
            seen.add(dept)
            dept = self._parents.get(dept, 0)
        return [email for d, user, email in self._managers.get(w.company, []) if d in seen and user != w.learner]

    def _supervisors(self, wants: list[Wanted]) -> dict[int, list[str]]:
        by_field: dict[int, set[int]] = {}
        for w in wants:
            field_id = self._fields.get(w.company) or self.site.supervisor_field
            if field_id:
                by_field.setdefault(field_id, set()).add(w.learner)
        found: dict[int, list[str]] = {}
        for field_id, learners in by_field.items():
            for r in self._run(f"SELECT userid, data FROM {self.cfg.table('user_info_data')} WHERE fieldid = :f "
                               "AND userid IN :ids", f=field_id, ids=sorted(learners)):
                found.setdefault(int(r.userid), []).extend(_addresses(r.data))
        return found
