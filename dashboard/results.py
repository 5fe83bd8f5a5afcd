"""Results next to the button that caused them.

A view that answers a button with a redirect flashes its result with
``flash_at(target, ...)``; the page it lands on shows the message where
``results.result_for(target)`` is called (beside that button, in the section
the redirect's ``#fragment`` scrolls to), not at the top of the page, which
is out of view there. Untargeted messages stay at the top (``messages()``,
for pages that land at their top). The category carries the target:
``"success@section-lms"``.
"""
from __future__ import annotations

from flask import flash

#: Flask-Admin's categories to Bootstrap's alert classes
ALERT = {"message": "info", "error": "danger"}


def flash_at(target: str, message: str, category: str = "info") -> None:
    """Flash ``message`` for the element ``target`` (its id, or a section's)."""
    flash(message, f"{category}@{target}")


def split(category: str) -> tuple[str, str]:
    """``"success@section-lms"`` → ``("success", "section-lms")``; untargeted: ``("info", "")``."""
    level, _, target = (category or "info").partition("@")
    return ALERT.get(level, level), target
