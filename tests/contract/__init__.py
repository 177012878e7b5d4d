"""Contract tests: one suite, run against the in-memory fakes and the DynamoDB/SQS adapters."""
