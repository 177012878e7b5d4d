"""alfred-jobs: durable background execution for the Alfred agent."""

__version__ = "0.1.0"
