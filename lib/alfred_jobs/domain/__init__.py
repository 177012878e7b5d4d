"""The domain: the job, its event log and payloads, the agent interface. Imports nothing above it."""
