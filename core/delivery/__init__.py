"""A batch's life, from plan to final status: the one home of delivery.

Every way in (the API, LMS events, the LMS connector, SMTP submission) makes
jobs; everything that happens to their batches is here, and ``tasks`` only
adapts it to the queue (ids in, one call out). The web side calls the same
functions: callbacks and bounce reports (``results``), retry now and resume
(``plan``), cancel (``settle.finish_job``).

- ``plan``: a job into keyset batches, each put in the ready set its way.
- ``routing``: which way (``way``: submitted to the company's cloud queue, or
  sent here) and by which route (provider, offload queue, SMTP fallback,
  operator relay), decided there only; the provider objects.
- ``claims``: both claims (send, submit) in one implementation, the lease, its
  renewal and release, the chunk marked ``sending``, and what a dead holder
  left in flight (``uncertain``, by the company's policy).
- ``messages``: each recipient's message, the same for a provider here and a
  cloud worker.
- ``limits``: the company's token bucket, throttle levels, circuit breaker.
- ``send``: the send loop (``BatchRun``); ``submit``: the offload submission
  (``Submission``) and its SMTP fallback (``FallbackRun``); ``ready``: a
  wake-up's loop over the ready set (``core.scheduler``).
- ``results``: one ``apply_results`` for every source (a provider's answer, a
  cloud worker's callback, a bounce report), one mapping of sent, failed,
  bounced, suppressed and retry.
- ``settle``: fail, pause, cancel, back off, and the job's final status.
- ``recovery``: what the sweep rebuilds from the database; overdue and lost
  offload batches.

Modules import downwards in that list's spirit: ``claims`` and ``settle`` know
no other part; ``results`` uses them; the loops use everything.
"""
