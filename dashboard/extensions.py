"""The web side's Flask extensions, created unbound and ``init_app``ed by the
composition root (``service``; the database handle is the domain's: ``core.db``)."""
from __future__ import annotations

from flask_login import LoginManager
from flask_wtf import CSRFProtect

login_manager = LoginManager()
csrf = CSRFProtect()
