"""RQ jobs that plan, batch, send, retry and finish work; certificates.

Job functions are module-level and take ids only: no addresses, passwords
or license codes ever travel through Redis as arguments or results.
"""
