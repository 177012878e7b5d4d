"""``alfred-jobs doctor`` names each problem the control-plane stand-in is told to show.

The stand-in (``alfred_tools.bedrock_control_standin``) answers real boto3 ``bedrock``, ``iam``
and ``sts`` clients in the AWS wire formats; the worker role it simulates is the one SAM builds
from template.yaml (``tests/support/iam.py``), so doctor is checked against the deployed policy.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Any

import pytest

from alfred_jobs.entry.wiring import get_settings
from alfred_tools.bedrock_control_standin import BedrockControlStandIn, Model
from alfred_tools.cli import main
from alfred_tools.doctor import Report, Target, diagnose, foundation_model_of, profile_prefix
from tests.support.iam import role_statements
from tests.support.template_env import nominal_resolver

HAIKU = "anthropic.claude-haiku-4-5-20251001-v1:0"
PROFILE = f"us.{HAIKU}"
US = ("us-east-1", "us-east-2", "us-west-2")
ROLE = "arn:aws:iam::123456789012:role/alfred-WorkerFunctionRole-ABC"


def worker_statements(model_id: str = PROFILE, agent: str = "bedrock") -> list[dict[str, Any]]:
    """The worker role's statements as SAM builds them from template.yaml for ``model_id``."""
    return copy.deepcopy(_worker_statements(model_id, agent))


@functools.lru_cache(maxsize=8)
def _worker_statements(model_id: str, agent: str) -> list[dict[str, Any]]:
    return role_statements("WorkerFunction", nominal_resolver({"AgentKind": agent, "BedrockModelId": model_id}))


@pytest.fixture
def cp() -> Iterator[BedrockControlStandIn]:
    with BedrockControlStandIn() as standin:
        standin.add_profile(PROFILE, US)
        standin.state.models["anthropic.claude-sonnet-4-6"] = Model("anthropic.claude-sonnet-4-6")
        standin.state.role_policies[ROLE] = worker_statements()
        yield standin


def run(cp: BedrockControlStandIn, model_id: str = PROFILE, role: str | None = ROLE, **kw: Any) -> Report:
    return diagnose(Target(model_id, "us-east-1", role, **kw), bedrock=cp.client("bedrock"), iam=cp.client("iam"))


def problems(report: Report) -> list[str]:
    return [f"{p.text} | fix: {p.fix}" for p in report.problems]


def only_problem(report: Report) -> str:
    found = problems(report)
    assert len(found) == 1, report.render()
    return found[0]


def test_profile_ids() -> None:
    assert profile_prefix(PROFILE) == "us" and profile_prefix(f"global.{HAIKU}") == "global"
    assert profile_prefix(HAIKU) is None and profile_prefix("amazon.nova-2-lite-v1:0") is None
    assert foundation_model_of(f"global.{HAIKU}") == HAIKU and foundation_model_of(HAIKU) == HAIKU


def test_a_sound_set_up_has_no_problem(cp: BedrockControlStandIn) -> None:
    report = run(cp)
    assert not report.problems, report.render()
    text = report.render()
    assert f"routes to {HAIKU} in us-east-1, us-east-2, us-west-2" in text
    assert f"model {HAIKU} is ACTIVE" in text and "may invoke the model" in text
    assert text.endswith("no problems found")


def test_a_legacy_model_is_named_with_its_end_of_life_and_active_alternatives(cp: BedrockControlStandIn) -> None:
    cp.state.models[HAIKU].status = "LEGACY"
    cp.state.models[HAIKU].legacy_time = "2026-10-01T00:00:00Z"
    cp.state.models[HAIKU].end_of_life_time = "2027-04-01T00:00:00Z"
    line = only_problem(run(cp))
    assert f"model {HAIKU} is LEGACY (since 2026-10-01); its end of life is 2027-04-01" in line
    assert "anthropic models ACTIVE in us-east-1: anthropic.claude-sonnet-4-6" in line


def test_an_unknown_model_is_named(cp: BedrockControlStandIn) -> None:
    retired = "anthropic.claude-3-5-haiku-20241022-v1:0"
    line = only_problem(run(cp, retired, role=None))
    assert f"model {retired} is unknown in us-east-1 (ResourceNotFoundException)" in line
    assert "choose an ACTIVE model" in line


def test_a_missing_profile_is_named(cp: BedrockControlStandIn) -> None:
    line = only_problem(run(cp, f"eu.{HAIKU}"))
    assert f"inference profile eu.{HAIKU} does not exist in us-east-1" in line
    assert "list-inference-profiles" in line


def test_credentials_that_read_nothing_are_named(cp: BedrockControlStandIn) -> None:
    cp.state.deny_control_plane = True
    line = only_problem(run(cp))
    assert "may not read the Bedrock control plane in us-east-1 (AccessDeniedException)" in line
    assert "bedrock:GetFoundationModel" in line


def test_a_role_without_the_model_grant_is_named_per_region(cp: BedrockControlStandIn) -> None:
    """The template before issue 25's fix: with a profile and BedrockFoundationModelId empty it
    granted foundation-model/<profile id>, which is no model."""
    broken = [{**st, "Resource": [r.replace("foundation-model/*", f"foundation-model/{PROFILE}")
                                  for r in st["Resource"]], "Condition": None} if "Condition" in st else st
              for st in worker_statements()]
    broken = [{k: v for k, v in st.items() if v is not None} for st in broken]
    cp.state.role_policies[ROLE] = broken
    found = problems(run(cp))
    assert len(found) == 3, found  # the model in each of three regions; the profile itself is granted
    for region, line in zip(US, found, strict=True):
        assert ("the worker's role may not call bedrock:InvokeModel, bedrock:InvokeModelWithResponseStream on "
                f"arn:aws:bedrock:{region}::foundation-model/{HAIKU} (through the profile)") in line
    assert all(f"BedrockModelId={PROFILE}" in line for line in found)


def test_a_role_of_a_bedrock_less_stack_is_named(cp: BedrockControlStandIn) -> None:
    cp.state.role_policies[ROLE] = worker_statements(agent="demo")
    assert len(problems(run(cp))) == 4  # the profile, and the model in three regions


def test_an_unknown_role_is_named(cp: BedrockControlStandIn) -> None:
    line = only_problem(run(cp, role="arn:aws:iam::123456789012:role/nope"))
    assert "role arn:aws:iam::123456789012:role/nope does not exist" in line


def test_an_unsubscribed_account_and_a_role_that_cannot_subscribe_are_named(cp: BedrockControlStandIn) -> None:
    cp.state.models[HAIKU].entitlement = "NOT_AVAILABLE"
    cp.state.models[HAIKU].agreement = "NOT_AVAILABLE"
    found = problems(run(cp))
    assert len(found) == 2, found
    assert "the account is not subscribed to" in found[0] and "aws-marketplace:Subscribe" in found[0]
    assert "lacks aws-marketplace:ViewSubscriptions, aws-marketplace:Subscribe" in found[1]


def test_an_unauthorised_account_is_named(cp: BedrockControlStandIn) -> None:
    cp.state.models[HAIKU].authorization = "NOT_AUTHORIZED"
    assert "not authorised to use" in only_problem(run(cp))


def test_anthropic_s_missing_use_case_form_is_named(cp: BedrockControlStandIn) -> None:
    cp.state.use_case_submitted = False
    line = only_problem(run(cp))
    assert "use-case form has not been submitted" in line and "put-use-case-for-model-access" in line


def test_a_model_id_that_needs_a_profile_is_named(cp: BedrockControlStandIn) -> None:
    cp.state.role_policies[ROLE] = worker_statements(HAIKU)
    line = only_problem(run(cp, HAIKU))
    assert "cannot be called by its id" in line and f"us.{HAIKU}" in line


def test_a_model_id_called_on_demand_has_no_problem(cp: BedrockControlStandIn) -> None:
    mistral = "mistral.mistral-large-2407-v1:0"
    cp.state.models[mistral] = Model(mistral, inference_types=("ON_DEMAND",))
    cp.state.role_policies[ROLE] = worker_statements(mistral)
    report = run(cp, mistral)
    assert not report.problems, report.render()


def test_a_global_profile_blocked_by_a_region_lock_is_named(cp: BedrockControlStandIn) -> None:
    glob = f"global.{HAIKU}"
    cp.add_profile(glob, ("", *US))
    cp.state.role_policies[ROLE] = worker_statements(glob)
    assert not run(cp, glob).problems
    cp.state.scp_denies_unspecified_region = True
    line = only_problem(run(cp, glob))
    assert ("(SCP) denies bedrock:InvokeModel, bedrock:InvokeModelWithResponseStream on "
            f"arn:aws:bedrock:::foundation-model/{HAIKU} (through the profile)") in line
    assert "aws:RequestedRegion = unspecified" in line and "exempt" in line


def test_a_foundation_model_parameter_that_is_not_the_profile_s_model_is_named(cp: BedrockControlStandIn) -> None:
    line = only_problem(run(cp, role=None, foundation_model_id="anthropic.claude-sonnet-4-6"))
    assert "is not the model the profile routes to" in line


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """The command reads ``get_settings()``, built once per process: not from another test's
    environment, and this test's not left behind for the next."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_command_reads_the_settings_and_exits_1_on_a_problem(
        cp: BedrockControlStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fresh_settings: None) -> None:
    for var, value in {"AWS_ENDPOINT_URL_BEDROCK": cp.url, "AWS_ENDPOINT_URL_IAM": cp.url,
                       "AWS_ENDPOINT_URL_STS": cp.url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "ALFRED_BEDROCK_MODEL_ID": PROFILE}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("ALFRED_BEDROCK_REGION", raising=False)
    assert main(["doctor", "--role", "alfred-WorkerFunctionRole-ABC"]) == 0
    assert capsys.readouterr().out.strip().endswith("no problems found")
    cp.state.models[HAIKU].status = "LEGACY"
    assert main(["doctor", "--role", ROLE]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM model {HAIKU} is LEGACY" in out and "1 problem found" in out
