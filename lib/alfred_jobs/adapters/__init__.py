"""Adapters behind the ports: DynamoDB/SQS (``aws``) and in-memory fakes (``memory``)."""
