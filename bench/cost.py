"""What 50,000 emails a day with certificates cost a month, per provider and mode.

The same code as the service's estimates: the month is the usage the service
would record (``core.usage`` meters) for 30 days of 50,000 certificate emails
a day, priced by ``core.prices.estimate(..., month=True)`` at the price table
in force (the shipped ``core/prices.toml``, or ``--prices FILE`` as
``OFFLOAD_PRICES`` would). Sizes are measured here, not assumed: one
certificate is rendered with the default template and a logo
(``core.certificate_render``, planned, as the workers make them), and a batch
of ``OFFLOAD_BATCH_SIZE`` rendered recipients is packed into queue messages by
``providers.offload.split_recipients`` / ``encode_message``, as offload mode
does. The baseline is SES's own price alone (the seeds' "about $0.10 per
1,000"), printed beside each row as a ratio.

    .venv/bin/python bench/cost.py [--per-day 50000] [--days 30] [--batch-size 200] [--prices FILE]
"""
from __future__ import annotations

import argparse
import base64
import io
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw  # noqa: E402

from core import prices, usage  # noqa: E402
from core.certificate_render import (  # noqa: E402
    DEFAULT_TEMPLATE_CSS,
    DEFAULT_TEMPLATE_HTML,
    new_verification_code,
    render_certificate_pdf,
)
from providers.offload import MAX_BATCH_BYTES, delivery_id, encode_message, split_recipients  # noqa: E402

#: the seeds' promise, per month for 50k emails a day
CLAIMS = {"AWS": (12, 15), "Cloudflare": (5, 20)}
QUEUE_LIMITS = {"sqs": MAX_BATCH_BYTES, "cloudflare_queue": 128_000}

TEXT = ("Dear {name},\n\nCongratulations on completing Workplace Health & Safety Level 2 on 7 December 2026.\n"
        "Your certificate is ready: {url}\nAnyone can check it at {verify}.\n\nAcme Learning\n")
HTML = ("<html><body style=\"font-family:Arial,sans-serif\"><p>Dear <b>{name}</b>,</p><p>Congratulations on "
        "completing <b>Workplace Health &amp; Safety Level 2</b> on 7 December 2026.</p><p><a href=\"{url}\" "
        "style=\"background:#1f2a44;color:#fff;padding:8px 14px;text-decoration:none\">Download your "
        "certificate</a></p><p>Anyone can check it at <a href=\"{verify}\">{verify}</a>.</p><p>Acme Learning</p>"
        "</body></html>")


def logo() -> bytes:
    img = Image.new("RGB", (520, 140), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 139, 139], fill="#1f2a44")
    draw.text((160, 60), "ACME LEARNING", fill="#1f2a44")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def certificate_bytes() -> int:
    """One certificate as the workers make it (default template, a logo, planned)."""
    from datetime import date
    code = new_verification_code()
    fields = {"learner_name": "Ann Müller-Ramírez", "course_name": "Workplace Health & Safety Level 2",
              "completion_date": date(2026, 12, 7), "grade": "87%", "expiry_date": date(2028, 12, 7),
              "issuer": "Acme Learning Ltd"}
    return len(render_certificate_pdf(DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS, fields, logo=logo(),
                                      verify_url=f"https://lms.example.com/verify/{code}", code=code, planned=True))


def batch_messages(batch_size: int, limit: int, pdf: int, attach: bool) -> list[int]:
    """The encoded sizes of one batch's queue messages, packed as offload mode packs them."""
    entries = []
    for i in range(batch_size):
        code = new_verification_code()
        url, verify = f"https://offload.example.com/certificates/{code}/download", \
            f"https://offload.example.com/verify/{code}"
        name = f"Learner Number {i:04d}"
        entry = {"email": f"learner{i:04d}@example.com",
                 "data": {"firstname": "Learner", "learner_name": name, "course_name": "Workplace Health & "
                          "Safety Level 2", "certificate_code": code, "certificate_url": url, "verify_url": verify},
                 "rendered": {"subject": f"Your certificate, {name}", "text": TEXT.format(name=name, url=url,
                                                                                          verify=verify),
                              "html": HTML.format(name=name, url=url, verify=verify)}}
        if attach:
            entry["attachments"] = [{"filename": f"certificate-{code}.pdf", "content_type": "application/pdf",
                                     "content": base64.b64encode(b"%" * pdf).decode()}]
        entries.append(entry)
    envelope = {"job_id": 12345, "batch_number": 1, "company_id": 1,
                "callback_url": "https://offload.example.com/callbacks/v1/batches?company=1",
                "sender": "noreply@acme.example", "template": {"subject": "", "text": "", "html": ""},
                "delivery_id": delivery_id(1, [])}
    parts, too_large = split_recipients(envelope, entries, limit)
    if too_large:  # as Submission.build: a certificate too large to attach goes as its link alone
        for i in too_large:
            entries[i].pop("attachments", None)
        more, _ = split_recipients(envelope, [entries[i] for i in too_large], limit)
        parts.extend([[too_large[i] for i in part] for part in more])
    return [len(encode_message({**envelope, "recipients": [entries[i] for i in part]})) for part in parts]


def month_usage(mode: str, emails: int, batch_size: int, pdf: int, attach: bool = False) -> dict[str, float]:
    """The meters ``core.usage`` would record for ``emails`` certificate emails in ``mode``."""
    batches = math.ceil(emails / batch_size)
    provider, transport, storage = {
        "SES direct": ("ses", None, "s3"), "SQS + Lambda offload": ("ses", "sqs", "s3"),
        "HTTPS (API Gateway) + Lambda": ("ses", "https", "s3"),
        "Cloudflare Queue + Worker": ("cloudflare", "cloudflare_queue", "r2"),
        "SendGrid": ("sendgrid", None, "s3"), "Mailgun": ("mailgun", None, "s3"), "SMTP relay": ("smtp", None, "s3"),
    }[mode]
    used: dict[str, float] = {f"emails:{provider}": emails, f"storage:put:{storage}": emails,
                              f"storage:bytes:{storage}": emails * pdf}
    if attach:
        used[f"attachment_bytes:{provider}"] = emails * pdf
    if transport is not None:
        sizes = batch_messages(batch_size, QUEUE_LIMITS.get(transport, MAX_BATCH_BYTES), pdf, attach)
        messages = len(sizes) * batches
        worker = usage.WORKER_OF[provider]
        used.update({f"deliveries:{worker}": messages, f"worker_emails:{worker}": emails})
        chunks = sum(usage.chunks(s) for s in sizes) * batches
        if transport == "sqs":
            used.update({"sqs:requests": chunks, "sqs:chunks": chunks})
        elif transport == "cloudflare_queue":
            used["queue:chunks"] = chunks
        else:
            used["gateway:requests"] = messages
    return used


def cloud_of(mode: str) -> str | None:
    if "Cloudflare" in mode:
        return "Cloudflare"
    return "AWS" if ("SES" in mode or "Lambda" in mode) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-day", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--prices", help="a price table file, as OFFLOAD_PRICES")
    args = parser.parse_args()
    table = prices.load(args.prices)
    emails = args.per_day * args.days
    pdf = certificate_bytes()
    for key in ("sendgrid", "mailgun"):  # the plan that suits this volume
        table[key]["plan"] = prices.cheapest_plan(table[key], emails)["name"]
    bare = emails * table["ses"]["per_1000_emails"] / 1000
    print(f"{args.per_day:,} certificate emails a day for {args.days} days ({emails:,}), one {pdf / 1024:.0f} KiB "
          f"certificate PDF each (measured: default template, a logo), batches of {args.batch_size}; prices of "
          f"{table['about']['taken']} ({table['about']['region']} for AWS). Free allowances and monthly fees "
          f"counted; certificates kept one month.")
    print(f"baseline, SES's price alone: ${bare:,.2f} a month\n")
    print("| mode | certificates | a month | × SES alone | the seeds' claim | biggest items |")
    print("|---|---|---|---|---|---|")
    modes = ["SES direct", "SQS + Lambda offload", "HTTPS (API Gateway) + Lambda", "Cloudflare Queue + Worker",
             "SendGrid", "Mailgun", "SMTP relay"]
    rows = [(m, False) for m in modes] + [("SES direct", True), ("SQS + Lambda offload", True),
                                           ("Cloudflare Queue + Worker", True)]
    for mode, attach in rows:
        est = prices.estimate(month_usage(mode, emails, args.batch_size, pdf, attach), table, month=True)
        top = sorted(est.lines, key=lambda ln: -ln.usd)[:3]
        claim = CLAIMS.get(cloud_of(mode) or "")
        claim_text = f"${claim[0]}–{claim[1]}" if claim else "—"
        name = mode + (f" ({table[mode.split()[0].lower()]['plan']})" if mode in ("SendGrid", "Mailgun") else "")
        print(f"| {name} | {'attached' if attach else 'linked'} | ${est.total:,.2f} | {est.total / bare:.2f}× | "
              f"{claim_text} | " + "; ".join(f"{ln.item} ${ln.usd:,.2f}" for ln in top) + " |")


if __name__ == "__main__":
    main()
