"""The CLI of CONTRACT §1."""
from __future__ import annotations

from sqlalchemy import select

from core.db import db
from core.models import Company, User


def parse(output: str) -> dict:
    return dict(line.split(": ", 1) for line in output.strip().splitlines() if ": " in line)


def test_company_create_prints_id_token_secret(runner, client):
    result = runner.invoke(args=["company", "create", "Northwind"])
    assert result.exit_code == 0, result.output
    out = parse(result.output)
    assert out["callback_secret"].startswith("whsec_")
    assert db.session.get(Company, int(out["id"])).name == "Northwind"
    # the printed token works against the API
    resp = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {out['api_token']}"})
    assert resp.status_code == 200 and resp.json["jobs"] == []


def test_company_configure_sets_and_validates(runner):
    cid = parse(runner.invoke(args=["company", "create", "Northwind"]).output)["id"]
    result = runner.invoke(args=["company", "configure", cid, "provider=aws", "mode=offload", "enabled=1",
                                 "sender=noreply@northwind.test", "aws_secret_key=s3cr3t", "max_send_rate=14",
                                 "smtp_tls=starttls", "smtp_port=587"])
    assert result.exit_code == 0, result.output
    assert "s3cr3t" not in result.output
    settings = db.session.get(Company, int(cid)).settings
    assert (settings.provider, settings.mode, settings.max_send_rate, settings.get_setting("aws_secret_key")) == \
        ("ses", "offload", 14.0, "s3cr3t")  # aws: SES's old name, still taken
    bad = runner.invoke(args=["company", "configure", cid, "provider=carrier-pigeon"])
    assert bad.exit_code != 0 and "provider" in bad.output
    unknown = runner.invoke(args=["company", "configure", cid, "colour=blue"])
    assert unknown.exit_code != 0 and "colour" in unknown.output


def test_user_create_roles(runner):
    cid = parse(runner.invoke(args=["company", "create", "Northwind"]).output)["id"]
    ok = runner.invoke(args=["user", "create", "Boss@Northwind.test", "--password", "long enough pw",
                             "--role", "manager", "--company", cid])
    assert ok.exit_code == 0, ok.output
    user = db.session.execute(select(User).where(User.email == "boss@northwind.test")).scalar_one()
    assert user.company_id == int(cid) and user.check_password("long enough pw")
    assert user.password_hash != "long enough pw"
    no_company = runner.invoke(args=["user", "create", "m@x.test", "--password", "long enough pw", "--role", "manager"])
    assert no_company.exit_code != 0 and "company" in no_company.output
    admin = runner.invoke(args=["user", "create", "root@x.test", "--password", "long enough pw", "--role", "admin"])
    assert admin.exit_code == 0
