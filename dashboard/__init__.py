"""ManiReports Cloud Offload: the web side (dashboard, LMS API, callbacks, bounces, operations endpoints).

Each part has an ``init_app``; the composition root (``service.create_app``)
builds the app and registers them. The web side imports ``core`` and
``providers``, never the workers (``tasks``).
"""
