"""Settings are parsed strictly; bad values name their variable; the README's table is the declarations;
nothing else reads the environment."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from core import settings
from core.settings import Settings, SettingsError, declared
from core.settings import load as load_settings
from providers.base import OPERATOR_ENDPOINT
from service import create_app

ROOT = Path(__file__).resolve().parents[2]
DEV = {"OFFLOAD_DEV": "1"}


def load(env: dict) -> Settings:
    """``core.settings.load`` with development on (the suite is development)."""
    return load_settings({**DEV, **env})


def test_defaults_match_the_contract():
    cfg = load({})
    assert cfg.database_url == "sqlite:///instance/offload.db"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.batch_size == 200
    assert cfg.bulk_threshold == 10
    assert cfg.bulk_window_s == 10.0
    assert cfg.fallback_smtp is None
    assert cfg.public_url == "http://127.0.0.1:5000"
    assert cfg.verify_rate_per_min == 60
    assert len(cfg.secret_key) >= 32 and load({}).secret_key != cfg.secret_key  # random per start


@pytest.mark.parametrize("name,value", [
    ("OFFLOAD_BATCH_SIZE", "lots"), ("OFFLOAD_BATCH_SIZE", "0"), ("OFFLOAD_BULK_THRESHOLD", "-1"),
    ("OFFLOAD_BULK_WINDOW_S", "soon"), ("OFFLOAD_ENCRYPTION_KEYS", "not-a-key"),
    ("OFFLOAD_FALLBACK_SMTP", "http://mail:25"), ("OFFLOAD_FALLBACK_SMTP", "smtp://mail:25?tls=maybe"),
    ("OFFLOAD_PUBLIC_URL", "ftp://x"), ("OFFLOAD_EMBEDDED_REDIS", "perhaps"), ("OFFLOAD_VERIFY_RATE_PER_MIN", "0"),
    ("OFFLOAD_SNS_URL_PATTERN", "(unclosed"), ("OFFLOAD_UNSUBSCRIBE_KEYS", "short"),
    ("OFFLOAD_CERTIFICATE_FONT_DIRS", "/usr/share/fonts:fonts"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError) as exc:
        load({name: value})
    assert name in str(exc.value)


def test_certificate_font_folders_are_a_path_list():
    assert load({}).certificate_font_dirs == ("/usr/share/fonts", "/usr/local/share/fonts")
    assert load({"OFFLOAD_CERTIFICATE_FONT_DIRS": "/opt/fonts:/usr/share/fonts"}).certificate_font_dirs == (
        "/opt/fonts", "/usr/share/fonts")


def test_production_requires_secret_key_and_encryption_keys():
    key = Fernet.generate_key().decode()
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load({"OFFLOAD_ENV": "production", "OFFLOAD_ENCRYPTION_KEYS": key})
    with pytest.raises(SettingsError, match="OFFLOAD_ENCRYPTION_KEYS"):
        load({"FLASK_ENV": "production", "SECRET_KEY": "s" * 40})
    cfg = load({"OFFLOAD_ENV": "production", "SECRET_KEY": "s" * 40, "OFFLOAD_ENCRYPTION_KEYS": key})
    assert cfg.production and cfg.encryption_keys == (key.encode(),)


def test_fallback_smtp_url_is_parsed():
    cfg = load({"OFFLOAD_FALLBACK_SMTP": "smtp://user%40x:p%3Ass@mail.example:2525?tls=starttls"})
    assert cfg.fallback_smtp == {"smtp_host": "mail.example", "smtp_port": 2525,
                                             "smtp_username": "user@x", "smtp_password": "p:ss",
                                             "smtp_tls": "starttls", OPERATOR_ENDPOINT: True}


def test_postgres_urls_use_psycopg3():
    assert load({"DATABASE_URL": "postgresql://u@h/db"}).database_url == "postgresql+psycopg://u@h/db"


def test_create_app_refuses_bad_settings(monkeypatch):
    monkeypatch.setenv("OFFLOAD_BATCH_SIZE", "many")
    with pytest.raises(SettingsError, match="OFFLOAD_BATCH_SIZE"):
        create_app()


def test_without_keys_the_service_refuses_to_start_unless_development_is_on():
    with pytest.raises(SettingsError, match="OFFLOAD_ENCRYPTION_KEYS"):
        load_settings({})
    for env in ({"OFFLOAD_DEV": "1"}, {"OFFLOAD_ENV": "development"}):
        cfg = load_settings(env)
        assert cfg.dev_key_in_use and cfg.development
    key = Fernet.generate_key().decode()
    assert not load_settings({"OFFLOAD_ENCRYPTION_KEYS": key, "SECRET_KEY": "s" * 40}).dev_key_in_use


def test_provider_timeout_is_each_providers_own_unless_set_and_stays_inside_the_lease():
    assert load({}).provider_timeout_s is None
    assert load({"OFFLOAD_PROVIDER_TIMEOUT_S": "2.5"}).provider_timeout_s == 2.5
    with pytest.raises(SettingsError, match="OFFLOAD_PROVIDER_TIMEOUT_S: must be shorter than OFFLOAD_LEASE_S"):
        load({"OFFLOAD_PROVIDER_TIMEOUT_S": "30", "OFFLOAD_LEASE_S": "30"})
    with pytest.raises(SettingsError, match="OFFLOAD_PROVIDER_TIMEOUT_S"):
        load({"OFFLOAD_PROVIDER_TIMEOUT_S": "0"})


def test_blank_is_unset_and_the_fallback_sender_follows_the_public_url():
    cfg = load({"OFFLOAD_BATCH_SIZE": "  ", "OFFLOAD_PUBLIC_URL": "https://offload.example/"})
    assert cfg.batch_size == 200 and cfg.public_url == "https://offload.example"
    assert cfg.fallback_from == "no-reply@offload.example"
    assert cfg.given == {"OFFLOAD_DEV", "OFFLOAD_PUBLIC_URL"}


def test_create_app_takes_field_names_and_installs_the_settings(app):
    assert settings.current().lease_s == 30  # the suite's TEST_SETTINGS, through create_app
    assert app.config["SECRET_KEY"] == settings.current().secret_key  # Flask's own keys are derived
    assert app.config["MAX_CONTENT_LENGTH"] == settings.current().max_content_length
    with pytest.raises(TypeError, match="no_such_setting"):
        create_app({"no_such_setting": 1})


def test_set_settings_changes_one_test_and_rejects_unknown_names(set_settings):
    set_settings(batch_size=7)
    assert settings.current().batch_size == 7
    with pytest.raises(TypeError):
        set_settings(OFFLOAD_BATCH_SIZE=7)


# --------------------------------------------------------------------------- the README's table


def readme_rows() -> dict[str, str]:
    """``{variable: default cell}`` of the README's settings table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Settings (environment)", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 3 and re.fullmatch(r"`[A-Z][A-Z0-9_]*`", cells[0]):
            assert cells[0][1:-1] not in rows, f"{cells[0]} has two rows"
            rows[cells[0][1:-1]] = cells[1]
    return rows


def test_the_readme_table_names_every_declared_variable_and_no_other():
    documented, declared_names = set(readme_rows()), {f.metadata["env"] for f in declared()}
    assert not declared_names - documented, "declared in core/settings.py, missing from the README's table"
    assert not documented - declared_names, "in the README's table, not declared in core/settings.py"


def test_the_readme_defaults_are_the_declared_ones():
    """A default cell that is one literal (`200`) parses to the declared default; ``none`` is no value."""
    fields = {f.metadata["env"]: f for f in declared()}
    defaults = Settings()
    checked = 0
    for name, cell in readme_rows().items():
        field = fields[name]
        default = getattr(defaults, field.name)
        if cell == "none":
            assert default in (None, "", (), {}), f"{name}: README says none, declared {default!r}"
            checked += 1
        elif re.fullmatch(r"`[^`]+`", cell):
            assert field.metadata["parse"](name, cell[1:-1]) == default, f"{name}: README says {cell}"
            checked += 1
    assert checked >= 35  # most rows state a default


# --------------------------------------------------------------------------- one reader of the environment


def product_modules() -> list[Path]:
    """Every module of the service's own packages (each top-level package but the tests) and top-level scripts."""
    packages = [p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"]
    assert {"core", "dashboard", "tasks", "providers"} <= {p.name for p in packages}
    return [m for pkg in packages for m in pkg.rglob("*.py")] + list(ROOT.glob("*.py"))


def environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that touch ``os.environ``/``os.getenv`` (or import them from ``os``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "putenv") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            found.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and \
                {a.name for a in node.names} & {"environ", "environb", "getenv", "putenv"}:
            found.append(node.lineno)
    return found


def test_nothing_but_core_settings_reads_the_environment():
    settings_module = ROOT / "core" / "settings.py"
    reads = [f"{m.relative_to(ROOT)}:{line}" for m in product_modules() if m != settings_module
             for line in environment_reads(m)]
    assert reads == [], "read the environment through core.settings"
    assert environment_reads(settings_module)  # the check sees a read where there is one
