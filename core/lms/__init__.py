"""The Moodle/IOMAD connector (issue 14): a per-company connection to the
LMS database (``connection``), taking over IOMAD's email queue (``email_queue``),
course completions to certificates (``completions``).

Set by admins and the operator CLI only (``company configure`` keys
``lms_url``, ``lms_prefix``, ``iomad_company_id``, ``iomad_email_queue``,
``lms_completions``, ``lms_dataroot``); the pollers run in the workers
(``tasks.lms``) and from ``flask --app wsgi lms poll ID``.
"""
