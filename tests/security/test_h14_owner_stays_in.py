"""Issue 26, item 4: an attack from elsewhere does not keep the owner out.

After 50 failed logins from 50 addresses the owner, from their own address with the
right password, used to get 429 in 14 of 15 tries: the account-wide back-off applied to
everyone. Now it applies only to addresses that have failed themselves, and never to a
browser that signed in to the account before (its signed device cookie): the owner gets
in every time, and the attackers stay slowed down."""
from __future__ import annotations

from tests.support.app import csrf_from

OWNER = "owner@acme.test"
PASSWORD = "correct horse battery"
HOME = "198.51.100.20"


def attempt(client, password, ip, email=OWNER):
    token = csrf_from(client.get("/login", environ_base={"REMOTE_ADDR": ip}).get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": ip})


def distributed_attack(app, addresses: int = 60) -> list[str]:
    """One wrong guess from each of ``addresses`` addresses (enough for the account-wide delay to
    reach its cap); returns them."""
    ips = [f"203.0.{113 + i // 250}.{1 + i % 250}" for i in range(addresses)]
    codes = [attempt(app.test_client(), f"guess-{i}", ip).status_code for i, ip in enumerate(ips)]
    assert set(codes) == {401}  # each address guessed once: no address of its own was slowed yet
    return ips


def test_the_owner_gets_in_every_time_under_a_distributed_attack(app, make_user):
    make_user(OWNER, role="admin")
    attackers = distributed_attack(app)
    codes = [attempt(app.test_client(), PASSWORD, HOME).status_code for _ in range(15)]
    assert codes == [302] * 15  # from an address with no failures of its own: never delayed
    # the attack stays slowed: an address that guessed waits for the account-wide delay
    assert attempt(app.test_client(), "another-guess", attackers[0]).status_code == 429
    # a fresh address gets one guess, then it has failed and waits too
    fresh = "192.0.2.77"
    assert attempt(app.test_client(), "guess-from-fresh", fresh).status_code == 401
    assert attempt(app.test_client(), "and-again", fresh).status_code == 429
    # even the right password from an address that failed waits (the delay says nothing of the password)
    assert attempt(app.test_client(), PASSWORD, fresh).status_code == 429


def test_a_known_device_gets_in_from_an_address_the_attack_shares(app, make_user):
    """The owner behind the same address as the attackers (a shared NAT): the device cookie
    of an earlier sign-in exempts that browser, and only that browser."""
    make_user(OWNER, role="admin")
    browser = app.test_client()
    first = attempt(browser, PASSWORD, HOME)
    assert first.status_code == 302
    cookie = next(c for c in first.headers.getlist("Set-Cookie") if c.startswith("offload_device="))
    assert "HttpOnly" in cookie and "Path=/login" in cookie
    device = browser.get_cookie("offload_device", path="/login").value

    shared = "203.0.113.200"
    for i in range(12):  # the attack from the owner's own address: past its per-address back-off
        attempt(app.test_client(), f"guess-{i}", shared)
    distributed_attack(app)

    assert attempt(app.test_client(), PASSWORD, shared).status_code == 429  # no cookie: this address waits
    returning = app.test_client()
    returning.set_cookie("offload_device", device, path="/login")
    assert attempt(returning, PASSWORD, shared).status_code == 302
    forged = app.test_client()  # a cookie not signed by the service counts for nothing
    forged.set_cookie("offload_device", device[:-4] + "AAAA", path="/login")
    assert attempt(forged, PASSWORD, shared).status_code == 429
    # a device's own failures still slow that device down
    guessing = app.test_client()
    guessing.set_cookie("offload_device", device, path="/login")
    codes = [attempt(guessing, f"typo-{i}", HOME).status_code for i in range(8)]
    assert codes[:5] == [401] * 5 and 429 in codes[5:]


def test_ipv6_addresses_count_per_64(app, make_user):
    make_user(OWNER, role="admin")
    codes = [attempt(app.test_client(), f"guess-{i}", f"2001:db8:1:2::{i + 1:x}").status_code for i in range(8)]
    assert codes[:5] == [401] * 5 and 429 in codes[5:]  # one /64 is one address
    assert attempt(app.test_client(), PASSWORD, "2001:db8:1:3::1").status_code == 302  # another /64
