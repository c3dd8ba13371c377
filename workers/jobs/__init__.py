"""The job modules a worker loads: the explicit list of every job kind's home.

A new job module is added here; ``VAULT_WORKER_IMPORTS`` adds more (tests, extensions).
"""

MODULES: tuple[str, ...] = ("workers.jobs.maintenance", "workers.jobs.media", "workers.jobs.keys", "workers.jobs.webhooks", "workers.jobs.releases",
                           "workers.jobs.lifecycle", "workers.jobs.storage")
