"""Agents that plug into the runner. ``build_agent`` picks one from settings (``ALFRED_AGENT``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alfred_jobs.domain.agent import Agent
    from alfred_jobs.ports import Deps


def build_agent(deps: Deps) -> Agent:
    """The configured agent: the deterministic demo agent by default."""
    if deps.settings.agent == "bedrock":
        from alfred_jobs.agents.bedrock import BedrockAgent  # imported lazily: only this agent needs bedrock-runtime

        return BedrockAgent.from_deps(deps)
    from alfred_jobs.agents.demo import DemoAgent

    return DemoAgent(deps.agent_data, deps.settings, deps.clock)
