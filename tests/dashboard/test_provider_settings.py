"""Provider settings declared once (providers.registry) and what is derived from them:
the settings form, `company configure`, the connection test and encryption at rest."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from core import delivery_settings
from core.crypto import EncryptedText
from core.db import db
from core.models import Company, DeliverySettings
from providers import Provider, Result, guard, register, registry
from providers.registry import Setting, SettingsGroup
from tasks.checks import planned_checks, redact
from tests.support.app import csrf_from, run_worker_burst
from tests.support.email_apis import FakeSendgrid

SG_KEY = "SG.settings-canary-key-42"


@pytest.fixture
def manager(company, make_user, auth):
    make_user("manager@acme.test", company_id=company.id)
    auth.login("manager@acme.test", "correct horse battery")
    return company


def save(client, company, section: str, **fields):
    page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
    return client.post(f"/admin/settings/{company.id}/save",
                       data={"csrf_token": csrf_from(page), "section": section, **fields})


def fresh(company_id: int) -> Company:
    db.session.expire_all()
    return db.session.get(Company, company_id)


def test_every_declared_secret_with_a_column_is_encrypted_and_the_rest_live_in_the_json_column():
    columns = DeliverySettings.__table__.columns
    for key in delivery_settings.secret_keys():
        if key in columns:
            assert isinstance(columns[key].type, EncryptedText), key
    declared = delivery_settings.by_key()
    assert {"sendgrid_api_key", "mailgun_api_key", "mailgun_webhook_signing_key", "aws_secret_key",
            "smtp_password", "cloudflare_api_token", "lms_url"} <= set(delivery_settings.secret_keys())
    # every column the form edits is declared, and keys without a column are the new providers' ones
    stored = {c.name for c in columns} - {"id", "company_id", "updated_at", "provider_settings", "aws_external_id"}
    assert stored <= set(declared)
    assert {"sendgrid_api_key", "mailgun_domain"} <= set(declared) - {c.name for c in columns}
    # every provider's settings, the older ones' too, are in the encrypted document: none has a column
    assert not set(registry.settings()) & ({c.name for c in columns} | {c.name for c in Company.__table__.columns})
    assert {"aws_secret_key", "smtp_host", "sns_topic_arn"} <= set(registry.settings())


def test_configure_takes_the_new_providers_and_validates_their_settings(runner):
    out = runner.invoke(args=["company", "create", "Northwind"]).output
    cid = dict(line.split(": ", 1) for line in out.strip().splitlines())["id"]
    result = runner.invoke(args=["company", "configure", cid, "provider=sendgrid", f"sendgrid_api_key={SG_KEY}",
                                 "mailgun_domain=MG.Northwind.test", "mailgun_region=eu"])
    assert result.exit_code == 0, result.output
    assert SG_KEY not in result.output
    settings = db.session.get(Company, int(cid)).settings
    assert settings.provider == "sendgrid"
    assert settings.provider_config()["sendgrid_api_key"] == SG_KEY
    assert settings.get_setting("mailgun_domain") == "mg.northwind.test"
    raw = db.session.execute(text("SELECT provider_settings FROM delivery_settings WHERE company_id = :c"),
                             {"c": int(cid)}).scalar_one()
    assert SG_KEY not in raw and "northwind" not in raw
    for bad, key in (("mailgun_region=mars", "mailgun_region"), ("mailgun_domain=http://x", "mailgun_domain"),
                     ("sendgrid_webhook_public_key=nope", "sendgrid_webhook_public_key")):
        failed = runner.invoke(args=["company", "configure", cid, bad])
        assert failed.exit_code != 0 and key in failed.output
    assert runner.invoke(args=["company", "configure", cid, "provider=mailgun"]).exit_code == 0
    cleared = runner.invoke(args=["company", "configure", cid, "sendgrid_api_key="])
    assert cleared.exit_code == 0
    assert "sendgrid_api_key" not in fresh(int(cid)).settings.provider_config()


def test_the_form_shows_the_new_sections_and_keeps_their_secrets_write_only(client, manager):
    html = client.get(f"/admin/settings/{manager.id}/").get_data(as_text=True)
    assert 'id="section-sendgrid"' in html and 'id="section-mailgun"' in html
    assert '<option value="sendgrid"' in html and '<option value="mailgun"' in html
    assert save(client, manager, "sendgrid", sendgrid_api_key=SG_KEY, sendgrid_webhook_public_key="").status_code \
        == 302
    assert save(client, manager, "general", provider="sendgrid", mode="direct", enabled="1",
                sender="noreply@acme.test", max_send_rate="").status_code == 302
    settings = fresh(manager.id).settings
    assert (settings.provider, settings.get_setting("sendgrid_api_key")) == ("sendgrid", SG_KEY)
    html = client.get(f"/admin/settings/{manager.id}/").get_data(as_text=True)
    assert SG_KEY not in html and 'data-secret-state="sendgrid_api_key">set ••••' in html
    # blank keeps, an error names the field and changes nothing
    assert save(client, manager, "sendgrid", sendgrid_api_key="", sendgrid_webhook_public_key="").status_code == 302
    assert fresh(manager.id).settings.get_setting("sendgrid_api_key") == SG_KEY
    resp = save(client, manager, "mailgun", mailgun_api_key="", mailgun_domain="not a domain", mailgun_region="us")
    assert resp.status_code == 303  # POST-redirect-GET: the page after it shows the error
    assert 'data-error-for="mailgun_domain"' in client.get(resp.headers["Location"]).get_data(as_text=True)
    assert fresh(manager.id).settings.get_setting("mailgun_region") is None


def test_the_connection_test_is_derived_from_the_registry(client, app, manager):
    labels = [name for name, _ in planned_checks({"provider": "sendgrid"})]
    assert labels == ["SendGrid"]
    assert [name for name, _ in planned_checks({"provider": "aws", "sqs_queue_url": "https://sqs.x/q"})] == \
        ["Amazon SES", "Amazon SQS queue"]
    assert [name for name, _ in planned_checks({"provider": "cloudflare", "mode": "offload"})] == \
        ["Cloudflare", "Cloudflare Queue"]
    assert redact({"x": f"key {SG_KEY}"}, {"sendgrid_api_key": SG_KEY}) == {"x": "key [redacted]"}

    before = guard.policy()
    guard.configure(allow_private=True, production=False)
    try:
        with FakeSendgrid(SG_KEY) as sendgrid:
            registry.configure(api_bases={"sendgrid": sendgrid.url})
            save(client, manager, "sendgrid", sendgrid_api_key=SG_KEY, sendgrid_webhook_public_key="")
            save(client, manager, "general", provider="sendgrid", mode="direct", enabled="1",
                 sender="noreply@acme.test", max_send_rate="")
            page = client.get(f"/admin/settings/{manager.id}/").get_data(as_text=True)
            check = client.post(f"/admin/settings/{manager.id}/test-connection",
                                data={"csrf_token": csrf_from(page)}, headers={"Accept": "application/json"})
            run_worker_burst(app)
            result = client.get(check.get_json()["result_url"]).get_json()
    finally:
        registry.configure(api_bases={})
        guard.configure(allow_private=before.allow_private, production=before.production,
                        allowed_hosts=before.allowed_hosts)
    assert result["ok"] is True and result["checks"][0]["name"] == "SendGrid"
    assert result["checks"][0]["facts"]["scopes"] == ["mail.send", "scopes.read"]
    assert SG_KEY not in json.dumps(result)


PIGEON = SettingsGroup("pigeon", "Carrier pigeon", "A provider added after the fact.", (
    Setting("pigeon_loft", "Loft", placeholder="north tower"),
    Setting("pigeon_token", "Token", "secret"),
    Setting("pigeon_birds", "Birds", "number", parse=registry.whole_number(1, 12)),
))


class PigeonProvider(Provider):
    name = "pigeon"
    label = "Carrier pigeon"
    settings = PIGEON

    def send(self, sender, messages):
        return [Result(m.key, "sent", message_id=f"coo-{self.config['pigeon_loft']}") for m in messages]


@pytest.fixture
def pigeon():
    register(PigeonProvider)
    yield PigeonProvider
    registry._backends[registry.SENDER].pop("pigeon")
    registry._groups.pop("pigeon")


def test_a_provider_added_later_needs_its_module_and_registration_only(client, manager, runner, pigeon):
    """Registered, it is a provider choice, has a form section, and its settings are stored (encrypted) with
    no migration; `company configure` validates them from the declaration."""
    html = client.get(f"/admin/settings/{manager.id}/").get_data(as_text=True)
    assert 'id="section-pigeon"' in html and '<option value="pigeon"' in html
    assert save(client, manager, "pigeon", pigeon_loft="north tower", pigeon_token="coo-secret",
                pigeon_birds="3").status_code == 302
    settings = fresh(manager.id).settings
    assert {k: settings.provider_config()[k] for k in ("pigeon_loft", "pigeon_token", "pigeon_birds")} == \
        {"pigeon_loft": "north tower", "pigeon_token": "coo-secret", "pigeon_birds": 3}
    assert "pigeon_token" in delivery_settings.secret_keys()
    failed = runner.invoke(args=["company", "configure", str(manager.id), "pigeon_birds=40"])
    assert failed.exit_code != 0 and "pigeon_birds: out of range" in failed.output
    assert runner.invoke(args=["company", "configure", str(manager.id), "provider=pigeon"]).exit_code == 0
