"""A batch's life, from claim to final status: one home for delivery.

Every way in (the API, LMS events, the LMS connector, SMTP submission) makes
jobs; everything that happens to their batches is here, and ``tasks`` only
adapts it to the queue (ids in, a call out). The web side calls the same
functions (callbacks, bounce reports, retry now, resume, cancel).

- ``claims``: both claims (send here, submit to a cloud queue), the lease,
  its renewal and release, the recipients in flight and the uncertain policy.
- ``results``: one ``apply_results`` for every source (a provider's answer,
  a cloud worker's callback, a bounce report), with one mapping of
  sent / failed / bounced / retry / suppressed.
"""
