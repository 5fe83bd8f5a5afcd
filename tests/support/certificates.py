"""Certificate jobs, learners, storage clients and downloads for the certificate tests."""
from __future__ import annotations

import hashlib
import io
import re
import subprocess
import urllib.error
import urllib.request

import boto3
import pytest
from PIL import Image, ImageDraw

from core import certificate_fonts

DOWNLOAD_LINK = re.compile(r"/certificates/([0-9A-Z]{20})/download")


def pdf_text(pdf: bytes) -> str:
    """The page's text as poppler's pdftotext reads it, one line per line, without the
    embedding marks (U+202A..U+202E) it puts around a right-to-left line."""
    done = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True, timeout=30)
    text = re.sub("[\u202a-\u202e]", "", done.stdout.decode("utf-8"))
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


def needs_fonts_for(text: str) -> None:
    """Skip, saying so, on a machine without the Debian font packages scripts/test-setup.sh installs."""
    if not all(certificate_fonts.stack(name).covers(text) for name in ("CertSans-Bold", "CertSerif-Bold")):
        pytest.skip("no installed font draws all of " + repr(text) +
                    " (fonts-noto-core, fonts-droid-fallback, fonts-wqy-microhei)")


def ses_settings(ses_url: str) -> dict:
    return {"provider": "aws", "aws_endpoint_url": ses_url, "aws_region": "us-east-1",
            "aws_access_key": "AKIATESTTESTTEST", "aws_secret_key": "test-secret", "sender": "noreply@acme.test"}


def client():
    """A boto3 S3 client on moto (test credentials)."""
    import os

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                        aws_access_key_id="AKIATESTTESTTEST", aws_secret_access_key="test-secret")


def learners(n: int, prefix: str = "learner", **extra) -> list[dict]:
    return [{"email": f"{prefix}{i}@acme.test",
             "data": {"learner_name": f"Learner {prefix.title()} {i:03d}", "course_name": f"Fire Safety {i % 4}",
                      "completion_date": "2026-11-20", "grade": f"{60 + i % 40}%", "expiry_date": "2028-11-20",
                      **extra}}
            for i in range(n)]


CERT_JOB = {"type": "certificate", "subject": "Your certificate for {{ course_name }}",
            "body_text": "Hi {{ learner_name }},\nwell done! Download: {{ certificate_url }}\n",
            "body_html": "<p>Hi {{ learner_name }}, well done! <a href=\"{{ certificate_url }}\">Download</a></p>"}


def submit(client, company, recipients, **extra) -> int:
    resp = client.post("/api/v1/jobs", json={**CERT_JOB, "recipients": recipients, **extra}, headers=company.auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png(color: str = "red", size: tuple[int, int] = (300, 120)) -> bytes:
    out = io.BytesIO()
    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).ellipse([10, 10, 100, 100], fill="#1f2a44")
    img.save(out, "PNG")
    return out.getvalue()
