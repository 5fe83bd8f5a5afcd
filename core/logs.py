"""Logging for the web app and the workers, set once per process."""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: their DEBUG logs carry auth headers
NOISY = ("botocore", "boto3", "urllib3", "s3transfer")


def configure(level: int = logging.INFO) -> None:
    """Log to stderr at ``level`` unless the host (gunicorn, pytest) configured logging already."""
    logging.basicConfig(level=level, format=FORMAT)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    silence_credential_loggers()


def silence_credential_loggers() -> None:
    """Keep the AWS libraries' DEBUG records (request headers: access key ids,
    session tokens) out of every log, whoever configured logging: the app
    factory calls this."""
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.INFO)
