"""The real Moodle/IOMAD tables the connector touches, transcribed from the XMLDB files
(names, types, lengths, nulls, defaults and indexes), for the connector's tests and bench.

- Moodle lib/db/install.xml (bycs-lp/moodle 4.x, commit 4cba0d85): config, course, course_completions,
  user, user_lastaccess, task_scheduled; and user_info_data (the profile field data IOMAD reads a
  learner's supervisor addresses from)
- IOMAD local/iomad/db/install.xml (iomad/iomad, commit 239f629, VERSION 20200814): company,
  company_users, department, companylicense, companylicense_users; and company_course (the company
  a course belongs to)
- IOMAD local/email/db/install.xml (IOMAD fork vanoirzacaron/iomad-realestateedu, VERSION 20241209):
  email, email_template

DDL as Moodle's own XMLDB generators write it (lib/ddl/mysql_sql_generator.php, postgres_sql_generator.php):
int(n) -> TINYINT/SMALLINT/MEDIUMINT/INT/BIGINT(n) on MySQL (n<=2,4,6,9,>9), SMALLINT/INTEGER/BIGINT on
PostgreSQL (n<=4,9,>9); char(n) -> VARCHAR(n), NOT NULL char without DEFAULT gets DEFAULT '' (default_for_char);
text -> LONGTEXT / TEXT; sequence id -> BIGINT(10) auto_increment / BIGSERIAL; keys of type unique -> unique
index, foreign -> plain index (Moodle creates no FK constraints).

The transcription was made for this project's issue 23 (the take-over on IOMAD's real schema) and is
kept here as written, with the two tables above added from the same XMLDB files.
"""
# ruff: noqa: E501, E741 - the transcription keeps its one-line-per-group layout and its I/C/T/N names
# field: (name, type, length, notnull, default)   type: int | char | text | number
I, C, T, N = "int", "char", "text", "number"

TABLES = {
    "config": {
        "fields": [("name", C, 255, True, None), ("value", T, None, True, None)],
        "keys": [("name", "unique", ["name"])],
        "indexes": [],
    },
    "course": {
        "fields": [("category", I, 10, True, 0), ("sortorder", I, 10, True, 0), ("fullname", C, 254, True, None),
                   ("shortname", C, 255, True, None), ("idnumber", C, 100, True, None), ("summary", T, None, False, None),
                   ("summaryformat", I, 2, True, 0), ("format", C, 21, True, "topics"), ("showgrades", I, 2, True, 1),
                   ("newsitems", I, 5, True, 1), ("startdate", I, 10, True, 0), ("enddate", I, 10, True, 0),
                   ("relativedatesmode", I, 1, True, 0), ("marker", I, 10, True, 0), ("maxbytes", I, 10, True, 0),
                   ("legacyfiles", I, 4, True, 0), ("showreports", I, 4, True, 0), ("visible", I, 1, True, 1),
                   ("visibleold", I, 1, True, 1), ("downloadcontent", I, 1, False, None), ("groupmode", I, 4, True, 0),
                   ("groupmodeforce", I, 4, True, 0), ("defaultgroupingid", I, 10, True, 0), ("lang", C, 30, True, None),
                   ("calendartype", C, 30, True, None), ("theme", C, 50, True, None), ("timecreated", I, 10, True, 0),
                   ("timemodified", I, 10, True, 0), ("requested", I, 1, True, 0), ("enablecompletion", I, 1, True, 0),
                   ("completionnotify", I, 1, True, 0), ("cacherev", I, 10, True, 0),
                   ("originalcourseid", I, 10, False, None), ("showactivitydates", I, 1, True, 0),
                   ("showcompletionconditions", I, 1, False, None), ("pdfexportfont", C, 50, False, None),
                   ("tobedeleted", I, 1, False, 0)],
        "keys": [("originalcourseid", "foreign", ["originalcourseid"])],
        "indexes": [("category", False, ["category"]), ("idnumber", False, ["idnumber"]),
                    ("shortname", False, ["shortname"]), ("sortorder", False, ["sortorder"]),
                    ("tobedeleted", False, ["tobedeleted"])],
    },
    "course_completions": {
        "fields": [("userid", I, 10, True, 0), ("course", I, 10, True, 0), ("timeenrolled", I, 10, True, 0),
                   ("timestarted", I, 10, True, 0), ("timecompleted", I, 10, False, None),
                   ("reaggregate", I, 10, True, 0)],
        "keys": [],
        "indexes": [("userid", False, ["userid"]), ("course", False, ["course"]),
                    ("timecompleted", False, ["timecompleted"]), ("useridcourse", True, ["userid", "course"])],
    },
    "user": {
        "fields": [("auth", C, 20, True, "manual"), ("confirmed", I, 1, True, 0), ("policyagreed", I, 1, True, 0),
                   ("deleted", I, 1, True, 0), ("suspended", I, 1, True, 0), ("mnethostid", I, 10, True, 0),
                   ("username", C, 100, True, None), ("password", C, 255, True, None), ("idnumber", C, 255, True, None),
                   ("firstname", C, 100, True, None), ("lastname", C, 100, True, None), ("email", C, 100, True, None),
                   ("emailstop", I, 1, True, 0), ("phone1", C, 20, True, None), ("phone2", C, 20, True, None),
                   ("institution", C, 255, True, None), ("department", C, 255, True, None),
                   ("address", C, 255, True, None), ("city", C, 120, True, None), ("country", C, 2, True, None),
                   ("lang", C, 30, True, "en"), ("calendartype", C, 30, True, "gregorian"), ("theme", C, 50, True, None),
                   ("timezone", C, 100, True, "99"), ("firstaccess", I, 10, True, 0), ("lastaccess", I, 10, True, 0),
                   ("lastlogin", I, 10, True, 0), ("currentlogin", I, 10, True, 0), ("lastip", C, 45, True, None),
                   ("secret", C, 15, True, None), ("picture", I, 10, True, 0), ("description", T, None, False, None),
                   ("descriptionformat", I, 2, True, 1), ("mailformat", I, 1, True, 1), ("maildigest", I, 1, True, 0),
                   ("maildisplay", I, 2, True, 2), ("autosubscribe", I, 1, True, 1), ("trackforums", I, 1, True, 0),
                   ("timecreated", I, 10, True, 0), ("timemodified", I, 10, True, 0), ("trustbitmask", I, 10, True, 0),
                   ("imagealt", C, 255, False, None), ("lastnamephonetic", C, 255, False, None),
                   ("firstnamephonetic", C, 255, False, None), ("middlename", C, 255, False, None),
                   ("alternatename", C, 255, False, None), ("moodlenetprofile", C, 255, False, None)],
        "keys": [],
        "indexes": [("username", True, ["mnethostid", "username"]), ("deleted", False, ["deleted"]),
                    ("confirmed", False, ["confirmed"]), ("firstname", False, ["firstname"]),
                    ("lastname", False, ["lastname"]), ("city", False, ["city"]), ("country", False, ["country"]),
                    ("lastaccess", False, ["lastaccess"]), ("email", False, ["email"]), ("auth", False, ["auth"]),
                    ("idnumber", False, ["idnumber"])],
    },
    "user_lastaccess": {
        "fields": [("userid", I, 10, True, 0), ("courseid", I, 10, True, 0), ("timeaccess", I, 10, True, 0)],
        "keys": [],
        "indexes": [("useridcourseid", True, ["userid", "courseid"]), ("userid", False, ["userid"]),
                    ("courseid", False, ["courseid"])],
    },
    "task_scheduled": {
        "fields": [("component", C, 255, True, None), ("classname", C, 255, True, None),
                   ("lastruntime", I, 10, False, None), ("nextruntime", I, 10, False, None),
                   ("blocking", I, 2, True, 0), ("minute", C, 200, True, None), ("hour", C, 70, True, None),
                   ("day", C, 90, True, None), ("month", C, 30, True, None), ("dayofweek", C, 25, True, None),
                   ("faildelay", I, 10, False, None), ("customised", I, 2, True, 0), ("disabled", I, 1, True, 0),
                   ("timestarted", I, 10, False, None), ("hostname", C, 255, False, None), ("pid", I, 10, False, None)],
        "keys": [],
        "indexes": [("classname_uniq", True, ["classname"])],
    },
    "user_info_data": {
        "fields": [("userid", I, 10, True, 0), ("fieldid", I, 10, True, 0), ("data", T, None, True, None),
                   ("dataformat", I, 2, True, 0)],
        "keys": [],
        "indexes": [("userfieldidx", True, ["userid", "fieldid"])],
    },
    "company_course": {
        "fields": [("companyid", I, 11, True, None), ("courseid", I, 11, True, None),
                   ("departmentid", I, 10, True, None), ("autoenrol", I, 1, True, 0)],
        "keys": [],
        "indexes": [("companycourse", False, ["companyid", "courseid"]),
                    ("departmentcourse", False, ["departmentid", "courseid"])],
    },
    "company": {
        "fields": [("name", C, 50, True, None), ("shortname", C, 25, True, None), ("city", C, 50, True, None),
                   ("country", C, 2, True, None), ("maildisplay", I, 2, True, 2), ("mailformat", I, 1, True, 1),
                   ("maildigest", I, 1, True, 0), ("autosubscribe", I, 1, True, 1), ("trackforums", I, 1, True, 0),
                   ("htmleditor", I, 1, True, 1), ("screenreader", I, 1, True, 0), ("timezone", C, 100, True, "99"),
                   ("lang", C, 30, True, "en"), ("bgcolor_header", C, 7, False, None),
                   ("bgcolor_content", C, 7, False, None), ("theme", C, 50, True, None), ("category", I, 20, True, 0),
                   ("profileid", I, 10, True, 0), ("suspended", I, 1, True, 0), ("customcss", T, None, False, None),
                   ("maincolor", C, 20, False, None), ("headingcolor", C, 20, False, None),
                   ("linkcolor", C, 20, False, None), ("emailprofileid", I, 20, False, None),
                   ("supervisorprofileid", I, 10, True, 0), ("managernotify", I, 10, True, 0),
                   ("parentid", I, 20, True, 0), ("ecommerce", I, 1, True, 0), ("custommenuitems", T, None, False, None),
                   ("managerdigestday", I, 1, True, 0), ("previousroletemplateid", I, 20, True, 0),
                   ("previousemailtemplateid", I, 20, True, 0), ("hostname", C, 200, False, None),
                   ("maxusers", I, 20, True, 0), ("validto", I, 20, False, None), ("suspendafter", I, 10, False, None),
                   ("companyterminated", I, 1, True, 0)],
        "keys": [],
        "indexes": [],
    },
    "department": {
        "fields": [("name", C, 255, True, None), ("shortname", C, 32, True, None), ("company", I, 20, True, 0),
                   ("parent", I, 20, False, None)],
        "keys": [], "indexes": [],
    },
    "company_users": {
        "fields": [("companyid", I, 10, True, None), ("userid", I, 10, True, None), ("managertype", I, 1, True, 0),
                   ("departmentid", I, 10, True, None), ("suspended", I, 1, True, 0), ("educator", I, 1, True, 0)],
        "keys": [],
        "indexes": [("companyusers", True, ["companyid", "userid"]), ("departmentusers", True, ["userid", "departmentid"]),
                    ("companymanagers", False, ["companyid", "managertype"]),
                    ("departmentmanagers", False, ["departmentid", "managertype"])],
    },
    "companylicense": {
        "fields": [("name", C, 255, True, None), ("allocation", I, 20, True, 0), ("humanallocation", I, 20, True, 0),
                   ("validlength", I, 20, True, 0), ("startdate", I, 20, True, 0), ("expirydate", I, 20, True, 0),
                   ("used", I, 20, True, 0), ("companyid", I, 20, False, None), ("parentid", I, 20, False, 0),
                   ("type", I, 1, True, 0), ("program", I, 1, True, 0), ("reference", C, 100, False, None),
                   ("instant", I, 1, True, 0), ("cutoffdate", I, 10, True, 0), ("clearonexpire", I, 1, True, 0)],
        "keys": [], "indexes": [],
    },
    "companylicense_users": {
        "fields": [("licenseid", I, 20, True, None), ("userid", I, 20, True, None), ("isusing", I, 1, True, 0),
                   ("timecompleted", I, 20, False, None), ("score", N, 10, False, None), ("result", T, None, False, None),
                   ("licensecourseid", I, 10, False, 0), ("issuedate", I, 20, False, 0), ("groupid", I, 20, True, 0)],
        "keys": [("licenseid", "foreign", ["licenseid"]), ("licensecourseid", "foreign", ["licensecourseid"])],
        "indexes": [],
    },
    "email_template": {
        "fields": [("companyid", I, 10, True, None), ("name", C, 50, True, None), ("lang", C, 20, True, "en"),
                   ("subject", C, 100, False, None), ("body", T, None, False, None), ("signature", T, None, False, None),
                   ("disabled", I, 1, True, 0), ("disabledmanager", I, 1, True, 0), ("disabledsupervisor", I, 1, True, 0),
                   ("emailto", C, 1333, False, None), ("emailtoother", C, 1333, False, None),
                   ("emailcc", C, 1333, False, None), ("emailccother", C, 1333, False, None),
                   ("emailfrom", I, 20, False, None), ("emailfromother", C, 100, False, None),
                   ("emailreplyto", I, 20, False, None), ("emailreplytoother", C, 100, False, None),
                   ("repeatperiod", I, 10, True, 0), ("repeatvalue", I, 10, True, 0), ("repeatday", I, 10, True, 0),
                   ("emailfromothername", T, None, False, None)],
        "keys": [("companyid_fk", "foreign", ["companyid"])],
        "indexes": [("compidnamelang", False, ["companyid", "name", "lang"]), ("compidlang", False, ["companyid", "lang"])],
    },
    "email": {
        "fields": [("templatename", C, 100, False, None), ("modifiedtime", I, 20, True, None),
                   ("sent", I, 20, False, None), ("subject", C, 255, True, None), ("body", T, None, True, None),
                   ("varsreplaced", I, 20, False, None), ("companyid", I, 20, True, 0), ("courseid", I, 20, False, None),
                   ("userid", I, 20, True, None), ("invoiceid", I, 20, False, None), ("classroomid", I, 20, False, None),
                   ("senderid", I, 20, False, None), ("headers", T, None, False, None), ("due", I, 20, True, 0)],
        "keys": [("companyid", "foreign", ["companyid"]), ("courseid", "foreign", ["courseid"]),
                 ("userid", "foreign", ["userid"]), ("invoiceid", "foreign", ["invoiceid"]),
                 ("classroomid", "foreign", ["classroomid"]), ("senderid", "foreign", ["senderid"])],
        "indexes": [],
    },
}


def _int_mysql(n):
    if n > 9:
        t = "BIGINT"
    elif n > 6:
        t = "INT"
    elif n > 4:
        t = "MEDIUMINT"
    elif n > 2:
        t = "SMALLINT"
    else:
        t = "TINYINT"
    return f"{t}({n})"


def _int_pg(n):
    return "BIGINT" if n > 9 else "INTEGER" if n > 4 else "SMALLINT"


def ddl(kind: str, prefix: str = "mdl_") -> list[str]:
    q = (lambda s: f"`{s}`") if kind == "mysql" else (lambda s: f'"{s}"')
    out = []
    for table, spec in TABLES.items():
        name = prefix + table
        cols = ["id BIGINT(10) NOT NULL auto_increment" if kind == "mysql" else "id BIGSERIAL"]
        for fname, ftype, length, notnull, default in spec["fields"]:
            if ftype == I:
                sql = _int_mysql(length) if kind == "mysql" else _int_pg(length)
            elif ftype == C:
                sql = f"VARCHAR({length})"
                if kind == "mysql":
                    sql += " COLLATE utf8mb4_unicode_ci"
            elif ftype == N:
                sql = "DECIMAL(10,5)" if kind == "mysql" else "NUMERIC(10,5)"
            else:
                sql = "LONGTEXT COLLATE utf8mb4_unicode_ci" if kind == "mysql" else "TEXT"
            if default is None and notnull and ftype == C:
                default = ""
            if default is not None and ftype != T:
                sql += f" DEFAULT '{default}'" if isinstance(default, str) else f" DEFAULT {default}"
            if notnull:
                sql += " NOT NULL"
            cols.append(f"{q(fname)} {sql}")
        cols.append("CONSTRAINT " + q(name + "_id_pk") + " PRIMARY KEY (id)" if kind != "mysql" else "PRIMARY KEY (id)")
        tail = (" ENGINE = InnoDB DEFAULT COLLATE = utf8mb4_unicode_ci ROW_FORMAT=Dynamic COMMENT='real xmldb'"
                if kind == "mysql" else "")
        out.append(f"CREATE TABLE {q(name)} (\n  " + ",\n  ".join(cols) + f"\n){tail}")
        n = 0
        for _key, ktype, fields in spec["keys"]:
            n += 1
            uniq = "UNIQUE " if ktype == "unique" else ""
            out.append(f"CREATE {uniq}INDEX {q(f'{name}_k{n}_ix')} ON {q(name)} ({', '.join(q(f) for f in fields)})")
        for _index, unique, fields in spec["indexes"]:
            n += 1
            uniq = "UNIQUE " if unique else ""
            out.append(f"CREATE {uniq}INDEX {q(f'{name}_i{n}_ix')} ON {q(name)} ({', '.join(q(f) for f in fields)})")
    return out


if __name__ == "__main__":
    import sys

    print(";\n".join(ddl(sys.argv[1] if len(sys.argv) > 1 else "mysql")) + ";")
