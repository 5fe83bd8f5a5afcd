"""The data model, split by aggregate; import from here.

- ``base``: naive UTC time and ``TenantMixin`` (every tenant-owned table
  carries ``company_id`` and is read through ``TenantMixin.scoped`` /
  ``core.tenancy.get_or_404``);
- ``statuses``: job, batch and recipient statuses as ``StrEnum``s;
- ``companies``: companies, delivery settings, users, API tokens, templates;
- ``jobs``: jobs, batches, recipients, callback receipts;
- ``campaigns``: LMS audience settings, suppressions, bounce events;
- ``lms``: what the LMS connector took (IOMAD email rows, completions);
- ``submissions``: messages taken by SMTP submission;
- ``events``: LMS events waiting for their window;
- ``usage``: what each job used of the cloud, per meter and day;
- ``stats``: counts kept as sends happen (a job's sent recipients per second, a company's per day);
- ``certificates`` and ``audit``.

Secrets and recipient data are encrypted at rest (``core.crypto``).
"""
from core.models.audit import AuditLog  # noqa: F401
from core.models.base import TenantMixin, sha256_hex, utcnow  # noqa: F401
from core.models.campaigns import (  # noqa: F401
                                   BOUNCE_KINDS,
                                   COMPLAINT,
                                   HARD,
                                   LIST_BOUNCE,
                                   LIST_COMPLAINT,
                                   LIST_MANUAL,
                                   LIST_UNSUBSCRIBE,
                                   SOFT,
                                   SUPPRESSION_LISTS,
                                   TRANSACTIONAL_LISTS,
                                   BounceEvent,
                                   CampaignSettings,
                                   Suppression,
)
from core.models.certificates import Certificate, CertificateTemplate  # noqa: F401
from core.models.companies import MODES, ROLES, ApiToken, Company, DeliverySettings, Template, User  # noqa: F401
from core.models.events import WaitingEvent  # noqa: F401
from core.models.jobs import Batch, Job, Recipient, WebhookReceipt  # noqa: F401
from core.models.lms import LmsCompletion, LmsEmailCopy, LmsEmailRow  # noqa: F401
from core.models.stats import CompanyDay, JobSecond  # noqa: F401
from core.models.statuses import *  # noqa: F401,F403
from core.models.statuses import (  # noqa: F401
                                   BATCH_FINAL,
                                   DEFAULT_PRIORITY,
                                   JOB_FINAL,
                                   JOB_TYPES,
                                   PRIORITIES,
                                   RECIPIENT_FINAL,
                                   BatchStatus,
                                   JobStatus,
                                   JobType,
                                   Priority,
                                   RecipientStatus,
                                   is_bulk,
)
from core.models.submissions import JOBBED, WAITING, SmtpMessage  # noqa: F401
from core.models.usage import JobUsage  # noqa: F401
