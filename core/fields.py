"""The fields of each job type: one table for every check, the OpenAPI document and the dashboard.

A recipient's ``data`` carries the fields its mail (and, for a certificate, its PDF) is made from. For
each job type the table says:

- ``required``: what every recipient must carry, not blank, whatever the template (a certificate's PDF
  cannot be made without the learner's name and the course);
- ``template_must_use``: what a stored template of the type must use, because this mail is how it
  reaches the learner (the password of a new account); where a template uses it, blank is missing too;
- ``optional``: the other fields the LMS sends for the type (Moodle's user fields, IOMAD's licence);
- ``service``: what the service adds itself (a certificate's links, the unsubscribe link of bulk mail);
- ``open``: any other name is the LMS's own (a notification carries whatever the LMS put in it).

What is checked where:

- a template is saved (API, dashboard): it must use ``template_must_use``; a name the type does not
  know is a warning in words (the LMS may send custom profile fields), never silent;
- a job is submitted (API, events, CSV import, re-engagement, the LMS connector): each recipient must
  carry every variable the template uses without a default, and the type's ``required`` fields (and
  the ``template_must_use`` ones the template uses) not blank (``missing``). The API answers 400
  naming the fields and the first recipients, or, with ``"on_missing": "fail_recipient"``, such a
  recipient alone is a failed recipient with the reason (``missing_fields: password``) and the rest
  are sent. Rendering is strict as well (``core.rendering``): nothing is ever sent with a blank.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.models.statuses import JobType

#: the recipient error of a recipient failed at submit for missing fields (``missing_fields: a, b``)
MISSING = "missing_fields"
#: how many recipients a 400 names (the count says how many there are)
NAMED_RECIPIENTS = 10
#: what a job request may say about recipients with missing fields
ON_MISSING = ("reject", "fail_recipient")

#: what a field is, in words (the OpenAPI document and the dashboard show them)
DESCRIPTIONS = {
    "firstname": "the learner's first name", "lastname": "the learner's last name",
    "fullname": "the learner's full name", "username": "the learner's Moodle user name",
    "email": "the learner's address (as data: the recipient's address is not a variable by itself)",
    "password": "the new account's password (kept encrypted, purged after the retention period)",
    "site": "the site's name", "login_url": "where the learner signs in",
    "course_name": "the course's full name", "course_url": "the course's address",
    "license_name": "the IOMAD licence's name", "license_expiry": "when the licence ends",
    "learner_name": "the learner's name on the certificate (else firstname and lastname)",
    "completion_date": "when the course was completed (ISO 8601 or a unix timestamp; default: the issue day)",
    "grade": "the grade, if any", "expiry_date": "when the certificate expires, if it does",
    "lastaccess": "when the learner last signed in", "days_inactive": "days since the learner last signed in",
    "subject_line": "the notification's subject", "message": "the notification's text", "url": "a link",
    "certificate_url": "the certificate's download link (the service adds it)",
    "verify_url": "the certificate's public verification page (the service adds it)",
    "certificate_code": "the certificate's verification code (the service adds it)",
    "unsubscribe_url": "the recipient's one-click unsubscribe link (the service adds it to bulk mail)",
}
_PERSON = ("firstname", "lastname", "fullname", "username", "email")


@dataclass(frozen=True)
class TypeFields:
    required: tuple[str, ...] = ()
    template_must_use: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    open: bool = False
    #: a required field another field (or fields) may stand in for: learner_name ← firstname/lastname
    alternatives: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def known(self) -> frozenset[str]:
        return frozenset((*self.required, *self.template_must_use, *self.optional, *self.service,
                          *self.alternatives_flat))

    @property
    def alternatives_flat(self) -> tuple[str, ...]:
        return tuple(name for names in self.alternatives.values() for name in names)


#: the table: every job type
TYPES: dict[str, TypeFields] = {
    JobType.CSV_IMPORT: TypeFields(template_must_use=("password",),
                                   optional=(*_PERSON, "site", "login_url")),
    JobType.LICENSE_ALLOCATION: TypeFields(template_must_use=("course_name",),
                                           optional=(*_PERSON, "site", "course_url", "license_name",
                                                     "license_expiry")),
    JobType.REENGAGEMENT: TypeFields(optional=(*_PERSON, "site", "course_name", "course_url", "lastaccess",
                                               "days_inactive", "login_url"),
                                     service=("unsubscribe_url",)),
    JobType.NOTIFICATION: TypeFields(optional=(*_PERSON, "site", "subject_line", "message", "url", "course_name"),
                                     open=True),
    JobType.CERTIFICATE: TypeFields(required=("learner_name", "course_name"),
                                    optional=("completion_date", "grade", "expiry_date", *_PERSON, "site"),
                                    service=("certificate_url", "verify_url", "certificate_code"),
                                    alternatives={"learner_name": ("firstname", "lastname")}),
}


def of(job_type: str | None) -> TypeFields:
    return TYPES.get(str(job_type), TypeFields(open=True)) if job_type else TypeFields(open=True)


def service_fields(job_type: str | None, bulk: bool = False) -> frozenset[str]:
    """What the service adds to a recipient's data before the mail is rendered."""
    found = set(of(job_type).service)
    if bulk:
        found.add("unsubscribe_url")
    return frozenset(found)


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def missing(job_type: str | None, uses: tuple[str, ...] | list[str], data, *, bulk: bool = False) -> list[str]:
    """What ``data`` lacks: the variables the template uses without a default (``uses``: a compiled
    template's ``required``) that it has no value for, the type's ``template_must_use`` fields the
    template uses that are blank, and the type's ``required`` fields it has blank or not at all. The
    service's own fields are not asked of the LMS."""
    return checker(job_type, uses, bulk=bulk)(data)


def checker(job_type: str | None, uses: tuple[str, ...] | list[str], *, bulk: bool = False):
    """``missing`` for many recipients of one job: a function of the data, the names worked out once
    (a 50,000-recipient request checks each recipient in a few dictionary lookups). It returns the
    sorted names lacking, or an empty list."""
    spec = of(job_type)
    added = service_fields(job_type, bulk)
    present = tuple(name for name in uses if name not in added)
    not_blank = tuple(name for name in spec.template_must_use if name in uses)
    required = tuple((name, spec.alternatives.get(name, ())) for name in spec.required)
    empty: dict = {}

    def check(data) -> list[str]:
        have = data if isinstance(data, dict) else empty
        if not required:  # the common case first: every name there, none of the must-use ones blank
            get = have.get
            for name in present:
                if get(name) is None:
                    break
            else:
                for name in not_blank:
                    value = get(name)
                    if value.__class__ is str and not value.strip():
                        break
                else:
                    return []
        lacking = [name for name in present if have.get(name) is None]
        for name in not_blank:
            if _blank(have.get(name)) and name not in lacking:
                lacking.append(name)
        for name, stand_ins in required:
            if name in lacking or not _blank(have.get(name)):
                continue
            if stand_ins and any(not _blank(have.get(other)) for other in stand_ins):
                continue
            lacking.append(name)
        return sorted(lacking) if lacking else lacking

    return check


def describe_missing(lacking: list[str]) -> str:
    """The stored reason of a recipient failed for missing fields."""
    return f"{MISSING}: {', '.join(lacking)}"


@dataclass
class TemplateCheck:
    """What a template's variables say against its type: ``errors`` refuse the save, ``warnings`` are shown."""

    errors: list[str]
    warnings: list[str]
    unknown: list[str]
    not_used: list[str]


def check_template(job_type: str | None, variables: tuple[str, ...] | list[str], type_label: str = "") -> TemplateCheck:
    """A template's variables against its job type's fields, in words."""
    spec = of(job_type)
    used = set(variables)
    what = type_label or (str(job_type) if job_type else "any job type")
    not_used = [name for name in spec.template_must_use if name not in used]
    errors = [f"A template for {what} must use {{{{ {name} }}}}: {DESCRIPTIONS.get(name, name)} reaches the "
              "learner only in this mail." for name in not_used]
    if job_type:
        known = spec.known
    else:  # a template for any type: a name no type knows
        known = frozenset().union(*(s.known for s in TYPES.values())) | {"unsubscribe_url"}
    unknown = [] if spec.open and job_type else sorted(used - known)
    warnings = []
    if unknown:
        names = ", ".join(unknown)
        fields = ", ".join(sorted(known - {"email"}))
        warnings.append(f"{names}: not a field of {what} (its fields: {fields}). Every recipient's data must "
                        f"carry {'it' if len(unknown) == 1 else 'them'}, or a job is refused; give a default "
                        f"with {{{{ {unknown[0]} | default('...') }}}} if it may be absent.")
    return TemplateCheck(errors, warnings, unknown, not_used)


def openapi_table() -> dict:
    """The table for the OpenAPI document: per type, required, optional and service fields."""
    return {str(t): {"required": list(s.required), "template_must_use": list(s.template_must_use),
                     "optional": list(s.optional), "added_by_the_service": list(s.service),
                     "alternatives": {k: list(v) for k, v in s.alternatives.items()}, "open": s.open}
            for t, s in TYPES.items()}
