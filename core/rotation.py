"""Re-encrypt every encrypted column under the newest key (``flask keys rotate``).

Reads the raw ciphertext with plain SQL (no round trip through the column
types), rotates each token with ``MultiFernet.rotate`` and writes it back,
a chunk of rows per transaction.
"""
from __future__ import annotations

from sqlalchemy import text

from core import crypto
from core.db import db

CHUNK = 1000
ENCRYPTED_TYPES = (crypto.EncryptedText, crypto.EncryptedJSON, crypto.EncryptedBytes)


def encrypted_columns() -> list[tuple[str, list[str]]]:
    """(table name, [column names]) for every table with encrypted columns."""
    found = []
    for table in db.metadata.sorted_tables:
        cols = [c.name for c in table.columns if isinstance(c.type, ENCRYPTED_TYPES)]
        if cols:
            found.append((table.name, cols))
    return found


def reencrypt_table(table: str, cols: list[str]) -> int:
    """Rotate every token of ``cols`` in ``table``; returns rows rewritten."""
    select_sql = text(f"SELECT id, {', '.join(cols)} FROM {table} WHERE id > :last ORDER BY id LIMIT :n")
    last_id, rewritten = 0, 0
    while True:
        rows = db.session.execute(select_sql, {"last": last_id, "n": CHUNK}).mappings().all()
        if not rows:
            return rewritten
        for row in rows:
            values = {c: crypto.rotate(row[c]) for c in cols if row[c]}
            if values:
                sets = ", ".join(f"{c} = :{c}" for c in values)
                db.session.execute(text(f"UPDATE {table} SET {sets} WHERE id = :id"), {**values, "id": row["id"]})
                rewritten += 1
        last_id = rows[-1]["id"]
        db.session.commit()


def reencrypt_all() -> dict[str, int]:
    """Rotate every stored secret and recipient datum; rows rewritten per table."""
    return {table: reencrypt_table(table, cols) for table, cols in encrypted_columns()}
