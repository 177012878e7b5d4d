"""Creating the local stack's tables: idempotent however many tables the emulator holds."""

from __future__ import annotations

from typing import Any

from alfred_jobs.settings import Settings
from alfred_tools import bootstrap


class Pages:
    def __init__(self, pages: list[list[str]]) -> None:
        self.pages = pages

    def paginate(self) -> list[dict[str, Any]]:
        return [{"TableNames": p} for p in self.pages]


class Waiter:
    def wait(self, **_: Any) -> None:
        pass


class Tables:
    """A DynamoDB client whose ListTables pages hold our tables on page 2 only (a CI run's emulator
    held more than 100 tables), and whose CreateTable refuses a table that exists."""

    class exceptions:
        class ResourceInUseException(Exception):
            pass

    def __init__(self, ours: list[str]) -> None:
        self.ours = set(ours)
        self.created: list[str] = []

    def get_paginator(self, name: str) -> Pages:
        assert name == "list_tables"
        return Pages([[f"other-{i}" for i in range(100)], sorted(self.ours)])

    def list_tables(self) -> dict[str, Any]:
        return {"TableNames": [f"other-{i}" for i in range(100)]}

    def create_table(self, **args: Any) -> None:
        if args["TableName"] in self.ours:
            raise self.exceptions.ResourceInUseException(args["TableName"])
        self.created.append(args["TableName"])

    def get_waiter(self, name: str) -> Waiter:
        return Waiter()

    def update_time_to_live(self, **_: Any) -> None:
        pass


def test_tables_named_past_the_first_page_are_not_created_again() -> None:
    settings = Settings()
    names = [spec.name for spec in bootstrap.table_specs(settings, bootstrap.load_template(None))]
    tables = Tables(names)
    for spec_name in names:
        assert spec_name in tables.ours
    existing = {n for page in tables.get_paginator("list_tables").paginate() for n in page["TableNames"]}
    assert set(names) <= existing
    # create_resources's table half, without queues
    template = bootstrap.load_template(None)
    for spec in bootstrap.table_specs(settings, template):
        assert spec.name in existing
    tables2 = Tables([])
    try:
        bootstrap.create_resources(settings, tables, _NoQueues())
    except _Stop:
        pass
    assert tables.created == [] and tables2.created == []


class _Stop(Exception):
    pass


class _NoQueues:
    def create_queue(self, **_: Any) -> dict[str, Any]:
        raise _Stop  # the tables are done by then
