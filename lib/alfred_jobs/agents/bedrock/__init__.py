"""The Bedrock agent (``ALFRED_AGENT=bedrock``): a kitchen assistant on a model in Amazon Bedrock.

``agent.py`` is the agent (think, act, reply, usage, errors); ``messages.py`` and ``converse.py``
the two transports (the Anthropic Messages API for Claude, Converse for the rest), both streamed;
``transport.py`` what they share (the call, the answer, usage and its estimates); ``kitchen``
stores live in ``agent.py``. Every name the rest of the system imports is re-exported here.
"""

from alfred_jobs.agents.bedrock.agent import (
    CLIENT_ATTEMPTS,
    DEFAULT_MODEL_ID,
    PLAN_TOOL,
    TRUNCATED_NOTE,
    BedrockAgent,
    BedrockConfig,
    DynamoKitchenStore,
    KitchenStore,
    MemoryKitchenStore,
    PlanSpec,
    build_client,
    parse_plan,
)
from alfred_jobs.agents.bedrock.transport import USAGE_KEYS, Answer, Call, usage_of

__all__ = [
    "CLIENT_ATTEMPTS", "DEFAULT_MODEL_ID", "PLAN_TOOL", "TRUNCATED_NOTE", "USAGE_KEYS", "Answer",
    "BedrockAgent", "BedrockConfig", "Call", "DynamoKitchenStore", "KitchenStore", "MemoryKitchenStore",
    "PlanSpec", "build_client", "parse_plan", "usage_of",
]
