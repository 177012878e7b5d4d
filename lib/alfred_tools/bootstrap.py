"""Create the tables and queues that template.yaml declares, on an emulator (moto, LocalStack).

template.yaml is the one source of truth: key schemas, indexes, TTL, queue attributes and the
redrive policy are read from it, not repeated here. Only the physical names are local (settings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alfred_jobs.settings import Settings

# Logical id in template.yaml → the settings field holding the local physical name.
TABLES = {
    "JobsTable": "jobs_table",
    "EventsTable": "events_table",
    "ConversationsTable": "conversations_table",
    "AgentDataTable": "agent_data_table",
    "StreamSlotsTable": "stream_slots_table",
}
QUEUES = {"JobsDeadLetterQueue": "dlq_name", "JobsQueue": "queue_name"}  # DLQ first: the redrive needs it


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that keeps CloudFormation short-form tags (!Ref, !GetAtt, !Sub...) as dicts."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def default_template_path() -> Path:
    """template.yaml at the repository root (lib/alfred_tools/bootstrap.py → ../../template.yaml)."""
    return Path(__file__).resolve().parents[2] / "template.yaml"


def load_template(path: Path | None = None) -> dict[str, Any]:
    """Parse template.yaml, keeping intrinsic functions as plain dicts."""
    with open(path or default_template_path(), encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.load(fh, Loader=_CfnLoader)
    return data


@dataclass(frozen=True)
class TableSpec:
    name: str
    create_args: dict[str, Any]
    ttl_attribute: str | None


def table_specs(settings: Settings, template: dict[str, Any] | None = None) -> list[TableSpec]:
    """CreateTable arguments for every table, from the template."""
    resources = (template or load_template())["Resources"]
    specs = []
    for logical_id, field in TABLES.items():
        props = resources[logical_id]["Properties"]
        name = getattr(settings, field)
        args: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("GlobalSecondaryIndexes"):
            args["GlobalSecondaryIndexes"] = [
                {k: v for k, v in gsi.items() if k in ("IndexName", "KeySchema", "Projection")}
                for gsi in props["GlobalSecondaryIndexes"]
            ]
        ttl = props.get("TimeToLiveSpecification") or {}
        specs.append(TableSpec(name, args, ttl.get("AttributeName") if ttl.get("Enabled") else None))
    return specs


def queue_attributes(logical_id: str, template: dict[str, Any], arns: dict[str, str]) -> dict[str, str]:
    """SetQueueAttributes-style attributes of one queue, resolving !GetAtt X.Arn to local ARNs."""
    props = template["Resources"][logical_id].get("Properties", {})
    attrs: dict[str, str] = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds",
                "ReceiveMessageWaitTimeSeconds", "MaximumMessageSize"):
        if key in props:
            attrs[key] = str(props[key])
    redrive = props.get("RedrivePolicy")
    if redrive:
        target = redrive["deadLetterTargetArn"]
        if isinstance(target, dict) and "Fn::GetAtt" in target:
            target = arns[target["Fn::GetAtt"][0]]
        attrs["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": target, "maxReceiveCount": int(redrive["maxReceiveCount"])})
    return attrs


def create_resources(settings: Settings, dynamodb: Any, sqs: Any,
                     template_path: Path | None = None) -> dict[str, str]:
    """Create every table and queue of the template if missing; returns the queue URLs by logical id."""
    template = load_template(template_path)
    # Every page: ListTables answers at most 100 names, and a test session's emulator holds more
    # (a CI run failed creating a table that page 2 would have named).
    existing = {name for page in dynamodb.get_paginator("list_tables").paginate()
                for name in page.get("TableNames", [])}
    for spec in table_specs(settings, template):
        if spec.name not in existing:
            try:
                dynamodb.create_table(**spec.create_args)
            except dynamodb.exceptions.ResourceInUseException:
                pass  # created meanwhile, or our own create whose answer was lost and retried
            dynamodb.get_waiter("table_exists").wait(TableName=spec.name)
            if spec.ttl_attribute:
                dynamodb.update_time_to_live(
                    TableName=spec.name,
                    TimeToLiveSpecification={"AttributeName": spec.ttl_attribute, "Enabled": True})
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    for logical_id, field in QUEUES.items():
        name = getattr(settings, field)
        attrs = queue_attributes(logical_id, template, arns)
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        if attrs:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        arns[logical_id] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        urls[logical_id] = url
    return urls
