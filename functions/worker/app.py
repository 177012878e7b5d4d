"""Worker Lambda: SQS batch → job runner (all logic in alfred_jobs.worker)."""

from alfred_jobs.worker import handler

__all__ = ["handler"]
