"""``[core] hostname_callable`` for the Celery test: each worker reports its own name.

Both test workers run on this one machine, so the real host name cannot tell them apart.
"""

import os


def name() -> str:
    """The worker's name from ``$CLV_TEST_WORKER_NAME`` (``main`` for the other processes)."""
    return os.environ.get("CLV_TEST_WORKER_NAME", "main")
