"""Settings are parsed strictly; bad values name their variable."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from core.settings import SettingsError
from core.settings import load as load_settings
from dashboard import create_app
from providers.base import OPERATOR_ENDPOINT

DEV = {"OFFLOAD_DEV": "1"}


def load(env: dict) -> dict:
    """``core.settings.load`` with development on (the suite is development)."""
    return load_settings({**DEV, **env})


def test_defaults_match_the_contract():
    cfg = load({})
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "sqlite:///instance/offload.db"
    assert cfg["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert cfg["OFFLOAD_BATCH_SIZE"] == 200
    assert cfg["OFFLOAD_BULK_THRESHOLD"] == 10
    assert cfg["OFFLOAD_BULK_WINDOW_S"] == 10.0
    assert cfg["OFFLOAD_FALLBACK_SMTP"] is None
    assert cfg["OFFLOAD_PUBLIC_URL"] == "http://127.0.0.1:5000"
    assert len(cfg["SECRET_KEY"]) >= 32 and load({})["SECRET_KEY"] != cfg["SECRET_KEY"]  # random per start


@pytest.mark.parametrize("name,value", [
    ("OFFLOAD_BATCH_SIZE", "lots"), ("OFFLOAD_BATCH_SIZE", "0"), ("OFFLOAD_BULK_THRESHOLD", "-1"),
    ("OFFLOAD_BULK_WINDOW_S", "soon"), ("OFFLOAD_ENCRYPTION_KEYS", "not-a-key"),
    ("OFFLOAD_FALLBACK_SMTP", "http://mail:25"), ("OFFLOAD_FALLBACK_SMTP", "smtp://mail:25?tls=maybe"),
    ("OFFLOAD_PUBLIC_URL", "ftp://x"), ("OFFLOAD_EMBEDDED_REDIS", "perhaps"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError) as exc:
        load({name: value})
    assert name in str(exc.value)


def test_production_requires_secret_key_and_encryption_keys():
    key = Fernet.generate_key().decode()
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load({"OFFLOAD_ENV": "production", "OFFLOAD_ENCRYPTION_KEYS": key})
    with pytest.raises(SettingsError, match="OFFLOAD_ENCRYPTION_KEYS"):
        load({"FLASK_ENV": "production", "SECRET_KEY": "s" * 40})
    cfg = load({"OFFLOAD_ENV": "production", "SECRET_KEY": "s" * 40, "OFFLOAD_ENCRYPTION_KEYS": key})
    assert cfg["OFFLOAD_PRODUCTION"] and cfg["OFFLOAD_ENCRYPTION_KEYS"] == [key.encode()]


def test_fallback_smtp_url_is_parsed():
    cfg = load({"OFFLOAD_FALLBACK_SMTP": "smtp://user%40x:p%3Ass@mail.example:2525?tls=starttls"})
    assert cfg["OFFLOAD_FALLBACK_SMTP"] == {"smtp_host": "mail.example", "smtp_port": 2525,
                                             "smtp_username": "user@x", "smtp_password": "p:ss",
                                             "smtp_tls": "starttls", OPERATOR_ENDPOINT: True}


def test_postgres_urls_use_psycopg3():
    assert load({"DATABASE_URL": "postgresql://u@h/db"})["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@h/db"


def test_create_app_refuses_bad_settings(monkeypatch):
    monkeypatch.setenv("OFFLOAD_BATCH_SIZE", "many")
    with pytest.raises(SettingsError, match="OFFLOAD_BATCH_SIZE"):
        create_app()


def test_without_keys_the_service_refuses_to_start_unless_development_is_on():
    with pytest.raises(SettingsError, match="OFFLOAD_ENCRYPTION_KEYS"):
        load_settings({})
    for env in ({"OFFLOAD_DEV": "1"}, {"OFFLOAD_ENV": "development"}):
        cfg = load_settings(env)
        assert cfg["OFFLOAD_DEV_KEY_IN_USE"] and cfg["OFFLOAD_DEVELOPMENT"]
    key = Fernet.generate_key().decode()
    assert not load_settings({"OFFLOAD_ENCRYPTION_KEYS": key})["OFFLOAD_DEV_KEY_IN_USE"]


def test_provider_timeout_is_each_providers_own_unless_set_and_stays_inside_the_lease():
    assert load({})["OFFLOAD_PROVIDER_TIMEOUT_S"] is None
    assert load({"OFFLOAD_PROVIDER_TIMEOUT_S": "2.5"})["OFFLOAD_PROVIDER_TIMEOUT_S"] == 2.5
    with pytest.raises(SettingsError, match="OFFLOAD_PROVIDER_TIMEOUT_S: must be shorter than OFFLOAD_LEASE_S"):
        load({"OFFLOAD_PROVIDER_TIMEOUT_S": "30", "OFFLOAD_LEASE_S": "30"})
    with pytest.raises(SettingsError, match="OFFLOAD_PROVIDER_TIMEOUT_S"):
        load({"OFFLOAD_PROVIDER_TIMEOUT_S": "0"})
