"""Password hashes keep werkzeug's format: old hashes verify, new ones are what werkzeug would check."""
from __future__ import annotations

import pytest
from werkzeug.security import check_password_hash, generate_password_hash

from core.passwords import check_password, hash_password

#: made by werkzeug 3.1.9's ``generate_password_hash("correct horse", method=...)``, as the users table holds them:
#: production's scrypt and the test suite's one-round PBKDF2
OLD_HASHES = [
    "scrypt:32768:8:1$FHuxVmEDXUv79xWL$2cc6305524c1e70b1221d2ae08c63ea824d562f9b895e48640e65ea98dab7c07efcc28ea2dc437"
    "fdf1c246c95a1c589f1ce1a85631c91185bf0e6b445c6893ae",
    "pbkdf2:sha256:1$K7MHnYKIZrp45rCk$1a7ded89a30f3abee2ffa84ed1e7fbc952e920803d796b7d68be2eb0b5a69068",
]


@pytest.mark.parametrize("method", ["scrypt:1024:8:1", "pbkdf2:sha256:1", "pbkdf2:sha512:1000"])  # cheap parameters
def test_werkzeug_hashes_verify_and_ours_verify_in_werkzeug(method):
    made_by_werkzeug = generate_password_hash("correct horse", method=method)
    assert check_password(made_by_werkzeug, "correct horse")
    assert not check_password(made_by_werkzeug, "correct horse!")
    ours = hash_password("correct horse", method)
    assert check_password_hash(ours, "correct horse") and check_password(ours, "correct horse")
    assert ours.split("$")[0] == made_by_werkzeug.split("$")[0]  # the same method string, parameters spelled out
    assert len(ours.split("$")[1]) == 16 and ours != hash_password("correct horse", method)  # a fresh salt


@pytest.mark.parametrize("stored", OLD_HASHES)
def test_a_stored_werkzeug_hash_from_before_verifies(stored):
    assert check_password(stored, "correct horse") and not check_password(stored, "correct hors")


def test_malformed_hashes_are_refused_and_unknown_methods_raise():
    assert not check_password("no dollar signs", "x")
    with pytest.raises(ValueError, match="Invalid hash method"):
        hash_password("x", "md5")
