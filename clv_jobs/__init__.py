"""CLV jobs: per-account Buy-Till-You-Die models and the Datamodel CSV, without Airflow.

Each module is one step of the job, in the order the pipeline runs them:
``settings`` → ``sources`` → ``validation`` → ``eligibility`` → ``features`` → ``model``
→ ``segments`` → ``datamodel`` → ``store`` → ``delivery``; ``pipeline`` strings them
together for the CLI (``cli``) and for the Airflow DAGs.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
