"""CSV downloads that are safe to open in a spreadsheet, streamed row by row.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return is a formula (or hides one) to Excel, LibreOffice and Google Sheets;
``neutralise`` prefixes such cells with ``'`` so they show as text (OWASP's
"CSV injection" advice). Recipient ``data`` is never exported: callers pass
explicit columns.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime

from flask import Response, stream_with_context

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: rows per chunk written to the response
CHUNK_ROWS = 500


def neutralise(value) -> str:
    """The cell text for ``value``; formula-like text gets a leading ``'``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.replace(microsecond=0).isoformat() + "Z"
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def csv_lines(header: list[str], rows: Iterable[Iterable]) -> Iterator[str]:
    """CSV text in chunks of ``CHUNK_ROWS`` rows, every cell neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise(h) for h in header])
    count = 0
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row])
        count += 1
        if count % CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def csv_response(filename: str, header: list[str], rows: Iterable[Iterable]) -> Response:
    """A streamed ``text/csv`` attachment (the request context stays for lazy queries)."""
    safe_name = "".join(ch for ch in filename if ch.isalnum() or ch in "-_.") or "export.csv"
    response = Response(stream_with_context(csv_lines(header, rows)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{safe_name}"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
