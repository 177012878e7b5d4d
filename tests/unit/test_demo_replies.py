"""The demo agent reads like a plausible cooking assistant (issue 18, finding 1): it names the
ingredients it found, gives as many ideas as asked, fits the kind of dish, never recites its own
steps, and stays deterministic and offline."""

from __future__ import annotations

import re

import pytest

from alfred_jobs.adapters.memory import MemoryAgentDataStore
from alfred_jobs.agents.demo import LABELS, DemoAgent
from alfred_jobs.agents.demo_text import read_request, reply_text
from alfred_jobs.domain.agent import AgentContext
from alfred_jobs.settings import Settings

# (message, ingredients it must name, how many ideas, the kind of dish in the header)
PROMPTS = [
    ("three recipes using chicken", ["chicken"], 3, "recipes"),
    ("two quick desserts", [], 2, "desserts"),
    ("I have chicken thighs, what can I cook?", ["chicken thighs"], 3, "recipes"),
    ("chicken and rice", ["chicken", "rice"], 3, "recipes"),
    ("5 ideas for eggs", ["eggs"], 5, "recipes"),
    ("one easy pasta dinner", ["pasta"], 1, "recipe"),
    ("a vegetarian soup with lentils and carrots", ["lentils", "carrots"], 1, "soup"),
    ("what can I make for breakfast with eggs and spinach", ["eggs", "spinach"], 3, "breakfasts"),
    ("4 snacks with chickpeas", ["chickpeas"], 4, "snacks"),
    ("six cheap dinners with potatoes and beans", ["potatoes", "beans"], 6, "recipes"),
    ("salmon and leeks [steps=4]", ["salmon", "leeks"], 3, "recipes"),
    ("a couple of salads with feta and cucumber", ["feta", "cucumber"], 2, "salads"),
    ("toast", [], 3, "recipes"),
]


@pytest.mark.parametrize(("message", "ingredients", "count", "kind"), PROMPTS)
def test_replies_name_the_ingredients_respect_the_count_and_fit_the_dish(
        message: str, ingredients: list[str], count: int, kind: str) -> None:
    reply = reply_text(message)
    header, *rest = reply.split("\n")
    assert header.startswith(f"Here {'is' if count == 1 else 'are'} {count} {kind} with ")
    for name in ingredients:
        assert name in header, (name, header)
    if not ingredients:
        assert "with what you have" in header
    ideas = [line for line in rest if re.match(r"\d+\. ", line)]
    assert [int(line.split(".")[0]) for line in ideas] == list(range(1, count + 1))
    assert len(set(ideas)) == len(ideas), "no idea twice"
    # never its own step list, never the directives, never a stray word of the question
    assert "steps" not in reply and "[" not in reply
    assert not any(label.lower() in reply.lower() for label in LABELS)
    for junk in ("three", "two", "quick,", "using", "cook?"):
        assert f" {junk} " not in header.replace(":", " ")
    assert reply_text(message) == reply, "deterministic"


def test_the_request_reader_keeps_multiword_ingredients_whole() -> None:
    assert read_request("chicken thighs and sweet potatoes").ingredients == ["chicken thighs", "sweet potatoes"]


def test_step_labels_never_repeat_however_many_steps() -> None:
    agent = DemoAgent(MemoryAgentDataStore(), Settings(demo_step_seconds=0))
    ctx = AgentContext(job_id="j", user_id="u", conversation_id="c", message="x [steps=20]", history=[],
                       attempt=1, step_outputs={}, cancelled=lambda: False)
    labels = [s.label for s in agent.think(ctx).steps]
    assert len(labels) == 20 and len(set(labels)) == 20


def test_the_streamed_reply_never_cuts_a_word() -> None:
    agent = DemoAgent(MemoryAgentDataStore(), Settings(demo_step_seconds=0))
    ctx = AgentContext(job_id="j", user_id="u", conversation_id="c", message="chicken and rice", history=[],
                       attempt=1, step_outputs={}, cancelled=lambda: False)
    chunks = list(agent.reply(agent.think(ctx), ctx))
    assert "".join(chunks) == reply_text("chicken and rice")
    assert all(c.endswith((" ", "\n")) or c == chunks[-1] for c in chunks)
