"""Worker Lambda: SQS batch → job runner (all logic in alfred_jobs.entry.worker)."""

from alfred_jobs.entry.worker import handler

__all__ = ["handler"]
