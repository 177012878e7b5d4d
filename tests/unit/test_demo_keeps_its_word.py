"""The demo agent keeps its word (issue 27, problem 4): the ingredients it plans with, asks about
and replies with are the ones the user named (tofu stays tofu), the pantry answer changes the
reply consistently, a named dish is the dish it gives, and plans fit the request. Each prompt runs
the agent's real think, act (answering the pantry question yes and no) and reply."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from alfred_jobs.adapters.memory import MemoryAgentDataStore
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.agent import AgentContext
from alfred_jobs.settings import Settings

# Things a recipe is "made with": naming one the user did not name would contradict them.
PROTEINS = ["chicken", "beef", "steak", "pork", "bacon", "ham", "sausage", "lamb", "turkey", "salmon", "tuna",
            "cod", "shrimp", "prawns", "tofu", "tempeh", "halloumi"]
MEATS = ["chicken", "beef", "steak", "pork", "bacon", "ham", "sausage", "lamb", "turkey"]

# (message, the ingredients the user named, in order; the dish the reply must be, if one was named)
PROMPTS: list[tuple[str, list[str], str | None]] = [
    # the prompts of issue 27
    ("stir fry with the tofu from my pantry", ["tofu"], "stir-fr"),
    ("mushroom risotto", ["mushroom"], "risotto"),
    ("chicken and rice", ["chicken", "rice"], None),
    # and a dozen more
    ("salmon and leeks", ["salmon", "leeks"], None),
    ("a tofu curry from my pantry", ["tofu"], "curr"),
    ("what can I cook with the mushrooms in my pantry?", ["mushrooms"], None),
    ("a vegetarian soup with lentils and carrots", ["lentils", "carrots"], "soup"),
    ("two quick desserts with apples", ["apples"], "dessert"),
    ("shrimp tacos", ["shrimp"], "taco"),
    ("beef stir-fry with broccoli", ["beef", "broccoli"], "stir-fr"),
    ("a pizza with spinach and feta", ["spinach", "feta"], "pizza"),
    ("breakfast with eggs from my pantry", ["eggs"], "breakfast"),
    ("chickpea curry", ["chickpea"], "curr"),
    ("halloumi salad", ["halloumi"], "salad"),
    ("tomato risotto, vegan please", ["tomato"], "risotto"),
    ("chicken thighs from my pantry", ["chicken thighs"], None),
]


NAMED_IN_EVERY_IDEA = {"risotto", "stir-fr", "taco", "pizza"}


@dataclass
class Run:
    plan: list[str]
    question: str | None
    reply: str


def run(message: str, answer: bool = True) -> Run:
    agent = DemoAgent(MemoryAgentDataStore(), Settings(demo_step_seconds=0))
    asked: list[str] = []

    def asker(prompt: str, kind: str, options: list[str] | None) -> bool:
        asked.append(prompt)
        return answer

    ctx = AgentContext(job_id="j", user_id="u", conversation_id="c", message=message, history=[], attempt=1,
                       step_outputs={}, cancelled=lambda: False, asker=asker)
    plan = agent.think(ctx)
    for step in plan.steps:
        ctx.step_outputs[step.index] = agent.act(step, ctx)
    return Run([s.label for s in plan.steps], asked[0] if asked else None, "".join(agent.reply(plan, ctx)))


def named(text: str, word: str) -> bool:
    """``word`` (or its plural, or its singular) as a word of ``text``."""
    stem = re.escape(word.lower().removesuffix("es" if word.endswith("oes") else "s"))
    return re.search(rf"(?<![a-z]){stem}(?:s|es)?(?![a-z])", text.lower()) is not None


@pytest.mark.parametrize(("message", "ingredients", "dish"), PROMPTS)
@pytest.mark.parametrize("answer", [True, False], ids=["yes", "no"])
def test_plan_question_and_reply_are_about_what_the_user_named(message: str, ingredients: list[str],
                                                                dish: str | None, answer: bool) -> None:
    got = run(message, answer)
    header = got.reply.split("\n")[0]
    ideas = [line for line in got.reply.split("\n") if re.match(r"\d+\. ", line)]
    # every ingredient named is in the reply's header, and the first in every idea
    for name in ingredients:
        assert named(header, name), (name, header)
    assert all(named(idea, ingredients[0]) for idea in ideas), ideas
    # a dish named is the dish given
    if dish:
        assert dish in header.lower(), got.reply
    if dish in NAMED_IN_EVERY_IDEA:  # a dish asked for by name (a curry may be a korma, a soup a chowder)
        assert all(dish in idea.lower() for idea in ideas), got.reply
    # nothing the user did not name contradicts them: no other protein, no meat when meat-free
    unnamed = [p for p in PROTEINS if not any(named(n, p) for n in ingredients)]
    for text in (got.reply, " ".join(got.plan), got.question or ""):
        assert not [p for p in unnamed if named(text, p)], (text, unnamed)
        if re.search(r"vegetarian|vegan", message):
            assert not [m for m in MEATS if named(text, m)], text
    # the plan fits: it searches for the first ingredient; it checks the pantry only when asked to
    assert any(named(label, ingredients[0]) for label in got.plan if label.startswith("Search")), got.plan
    assert got.plan[0].startswith("Check the pantry") == ("pantry" in message), got.plan
    # the pantry: asked about the first ingredient named, and the answer changes the reply to match
    if "pantry" not in message:
        assert got.question is None and "pantry" not in got.reply
        return
    assert got.question is not None and named(got.question, ingredients[0]), got.question
    note = next(line for line in got.reply.split("\n") if "pantry" in line)
    assert named(note, ingredients[0]), note
    if answer:
        assert note.startswith("I used the ") and note.endswith("from your pantry."), note
    else:
        assert note.startswith("I left your pantry as it was") and "still there" in note, note


def test_the_issues_tofu_stir_fry_never_mentions_chicken() -> None:
    for answer in (True, False):
        got = run("stir fry with the tofu from my pantry", answer)
        assert got.question == "Use the tofu from your pantry?"
        assert "chicken" not in got.reply.lower() and got.reply.startswith("Here are 3 stir-fries with tofu:")
    assert "I used the tofu from your pantry." in run("stir fry with the tofu from my pantry", True).reply


def test_mushroom_risotto_is_a_mushroom_risotto() -> None:
    got = run("mushroom risotto")
    assert got.reply.startswith("Here are 3 risottos with mushrooms:")
    assert "pilaf" not in got.reply and "traybake" not in got.reply
    assert got.plan[0] == "Search risottos with mushrooms"


def test_plans_differ_with_the_request_and_keep_their_step_count() -> None:
    plans = {m: run(f"{m} [steps=4]").plan for m, _, _ in PROMPTS}
    assert all(len(p) == 4 and len(set(p)) == 4 for p in plans.values())
    assert len({p[0] for p in plans.values()}) > 5, "not every plan starts the same way"
    assert run("x [steps=20]").plan[0] == "Check the pantry"  # a request naming nothing: the generic plan
