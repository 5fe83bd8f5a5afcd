"""Moodle's mailer as a test client: ``tests/support/moodle_mailer.php`` under php-cli with
Debian's PHPMailer (``scripts/test-setup.sh`` installs both where apt is available)."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("moodle_mailer.php")
AUTOLOAD = Path("/usr/share/php/libphp-phpmailer/autoload.php")


def require_phpmailer() -> None:
    if shutil.which("php") is None or not AUTOLOAD.exists():
        pytest.skip("php-cli and libphp-phpmailer are not installed (scripts/test-setup.sh installs them)")


def send(host: str, port: int, user: str, password: str, messages: list[dict], *, maxbulk: int = 50,
         secure: str = "", cafile: str | None = None, timeout: float = 120) -> list[dict]:
    """Send ``messages`` as Moodle does; one ``{"ok", "message_id" | "error"}`` per message."""
    require_phpmailer()
    config = {"host": host, "port": port, "user": user, "pass": password, "maxbulk": maxbulk, "secure": secure,
              "cafile": cafile, "messages": messages}
    done = subprocess.run(["php", str(SCRIPT)], input=json.dumps(config), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"php exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def attachment(filename: str, content: bytes, content_type: str = "application/pdf") -> dict:
    return {"filename": filename, "content": base64.b64encode(content).decode(), "type": content_type}
