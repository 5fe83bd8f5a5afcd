"""Flask-Admin's stock templates without inline script.

Flask-Admin 2's Bootstrap 4 templates load their scripts from files, but a few
still carry inline handlers (``onclick="return modelActions.execute(...)"``,
the delete button's ``faHelpers.safeConfirm``) and ``href="javascript:void(0)"``
links, which a ``script-src 'self'`` policy blocks. Each is rewritten as the
template's source is loaded into a data attribute that ``static/forms.js``
handles (``data-model-action``, ``data-confirm-click``, ``data-noop``). A
rewrite whose text is no longer in the template raises: a Flask-Admin upgrade
that changed it fails every page that uses it, not silently.
"""
from __future__ import annotations

import os

import flask_admin
from jinja2 import BaseLoader

#: Flask-Admin's own templates (its theme's folder), by the name a page extends them with
FLASK_ADMIN = os.path.dirname(flask_admin.__file__) + os.sep
PREFIX = "admin/"
_SURE = "{{ _gettext('Are you sure you want to delete this record?') }}"
#: template → (text Flask-Admin writes, what we write instead); each must be found
REWRITES: dict[str, tuple[tuple[str, str], ...]] = {
    "actions.html": ((
        """onclick="return modelActions.execute('{{ p[0] }}');\"""", 'data-model-action="{{ p[0] }}"'),),
    "model/row_actions.html": ((
        "onclick=\"return faHelpers.safeConfirm('" + _SURE + "');\"", 'data-confirm-click="' + _SURE + '"'),),
    "model/layout.html": ((' onclick="return false;"', ""),),
    "model/inline_list_base.html": ((
        """onclick="faForm.addInlineField(this, '{{ field.id }}');\"""", 'data-add-inline="{{ field.id }}"'),),
}
#: in every stock template: a link that goes nowhere, without running a URL
NOOP = ('href="javascript:void(0)"', 'href="#" data-noop')


class InlineScriptError(RuntimeError):
    """A stock template no longer has the text a rewrite expects."""


def rewrite(name: str, source: str) -> str:
    """``source`` of Flask-Admin's template ``name`` without its inline handlers and ``javascript:`` links."""
    for old, new in REWRITES.get(name.removeprefix(PREFIX), ()):
        if old not in source:
            raise InlineScriptError(f"{name}: {old[:60]!r} not found; update dashboard.admin.csp")
        source = source.replace(old, new)
    return source.replace(*NOOP)


class RewritingLoader(BaseLoader):
    """The app's loader, with ``rewrite`` applied to what it loads."""

    def __init__(self, inner: BaseLoader):
        self.inner = inner

    def get_source(self, environment, template):
        source, filename, uptodate = self.inner.get_source(environment, template)
        if filename and filename.startswith(FLASK_ADMIN):
            source = rewrite(template, source)
        return source, filename, uptodate

    def list_templates(self):
        return self.inner.list_templates()


def init_app(app) -> None:
    app.jinja_env.loader = RewritingLoader(app.jinja_env.loader)
