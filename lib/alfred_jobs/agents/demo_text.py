"""The demo agent's words: what it reads in a message, and the reply it writes. Deterministic and
offline, but a plausible cooking assistant: it names the ingredients it found, gives as many ideas
as asked (1 to 6, else 3), fits them to the kind of dish asked for, and never recites its steps."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Longest names first, so "chicken thighs" wins over "chicken".
INGREDIENTS = sorted({
    "chicken thighs", "chicken breast", "chicken", "ground beef", "beef", "steak", "pork", "bacon", "ham",
    "sausage", "lamb", "turkey", "salmon", "tuna", "cod", "shrimp", "prawns", "tofu", "tempeh", "eggs", "egg",
    "rice", "pasta", "spaghetti", "noodles", "quinoa", "couscous", "bread", "tortillas", "lentils", "chickpeas",
    "black beans", "beans", "potatoes", "sweet potatoes", "spinach", "kale", "broccoli", "cauliflower",
    "mushrooms", "tomatoes", "peppers", "zucchini", "courgette", "aubergine", "eggplant", "carrots", "onions",
    "leeks", "cabbage", "corn", "peas", "avocado", "cucumber", "squash", "pumpkin", "cheese", "feta",
    "mozzarella", "parmesan", "halloumi", "yogurt", "apples", "pears", "bananas", "berries", "strawberries",
    "blueberries", "lemon", "lime", "chocolate", "oats", "coconut milk", "ginger", "basil", "cilantro",
}, key=lambda n: (-len(n), n))
SINGULAR = {"egg": "eggs"}

NUMBERS = {"one": 1, "a": 1, "an": 1, "two": 2, "a couple of": 2, "couple of": 2, "three": 3, "a few": 3,
           "few": 3, "four": 4, "five": 5, "six": 6}
DISH_NOUNS = r"(?:recipes?|ideas?|dish(?:es)?|meals?|dinners?|lunch(?:es)?|options?|ways?|desserts?|soups?|" \
             r"salads?|breakfasts?|snacks?|curr(?:y|ies)|stews?)"

# What is asked for: (words that say it, the plural the reply uses, ideas with {i} for the ingredient)
KINDS: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = [
    (("dessert", "desserts", "sweet", "cake", "cookies", "baking"), "desserts",
     ("{i} crumble with a crunchy oat topping", "no-bake {i} bars", "warm {i} pudding cups",
      "{i} galette with a buttery crust", "baked {i} with honey and yogurt", "{i} and chocolate mug cake")),
    (("soup", "soups", "stew", "stews", "broth"), "soups",
     ("{i} and white bean soup", "roasted {i} soup with garlic croutons", "{i} noodle soup with ginger",
      "hearty {i} and vegetable stew", "creamy {i} chowder", "spiced {i} and lentil soup")),
    (("salad", "salads"), "salads",
     ("warm {i} salad with a lemon dressing", "{i} grain bowl with herbs", "crunchy {i} slaw",
      "{i} and roasted vegetable salad", "{i} salad with toasted seeds", "charred {i} with greens")),
    (("breakfast", "breakfasts", "brunch"), "breakfasts",
     ("{i} breakfast hash with a fried egg", "{i} and cheese omelette", "{i} breakfast muffins",
      "{i} breakfast burritos", "savoury {i} pancakes", "{i} shakshuka")),
    (("snack", "snacks"), "snacks",
     ("crispy {i} bites", "{i} and yogurt dip", "spiced roasted {i}", "{i} lettuce wraps",
      "smashed {i} on toast", "{i} energy balls")),
]
# A dish named outright: (words that say it, the plural the reply uses, ideas with {i}). It wins
# over the kinds above: "mushroom risotto" is a risotto, "tofu stir fry" a stir-fry.
DISHES: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = [
    (("risotto", "risottos"), "risottos",
     ("classic {i} risotto with parmesan", "baked {i} risotto with thyme", "{i} risotto with lemon and peas",
      "creamy {i} risotto with white wine", "{i} risotto with crispy sage", "{i} and herb risotto")),
    (("stir fry", "stir-fry", "stirfry", "stir fries", "stir-fries"), "stir-fries",
     ("{i} stir-fry with garlic and ginger", "sweet and sour {i} stir-fry", "{i} and broccoli stir-fry with noodles",
      "sesame {i} stir-fry with rice", "spicy {i} stir-fry with peppers", "{i} stir-fry with cashews")),
    (("curry", "curries"), "curries",
     ("{i} curry with coconut milk", "{i} tikka masala", "green {i} curry", "{i} and spinach curry",
      "{i} korma", "dry-spiced {i} curry")),
    (("taco", "tacos"), "tacos",
     ("{i} tacos with lime slaw", "crispy {i} tacos", "{i} tacos with pickled onions", "smoky {i} tacos",
      "{i} taco bowls", "{i} tacos with avocado crema")),
    (("pizza", "pizzas"), "pizzas",
     ("{i} pizza with mozzarella", "white {i} pizza with garlic", "{i} flatbread pizza",
      "spicy {i} pizza", "{i} and rocket pizza", "sheet-pan {i} pizza")),
    (("pie", "pies"), "pies",
     ("{i} pie with a flaky crust", "{i} pot pie", "{i} and potato pie", "{i} hand pies",
      "{i} filo pie", "cottage-style {i} pie")),
]
MAINS = ("{i} stir-fry with garlic and ginger", "sheet-pan {i} and roasted vegetables", "creamy {i} skillet",
         "{i} rice bowl with a quick pickle", "{i} tacos with lime slaw", "one-pot {i} pilaf",
         "{i} traybake with lemon and herbs", "{i} curry with coconut milk")
GENERIC = "what you have"
FALLBACK = {"desserts": "fruit", "breakfasts": "egg", "snacks": "chickpea"}  # no ingredient named
MASS_NOUNS = {"couscous", "hummus", "asparagus", "peas"}


def as_modifier(name: str) -> str:
    """An ingredient as the first word of a dish name: "egg tacos", "lentil soup", "potato hash"."""
    head, _, last = name.rpartition(" ")
    if last in MASS_NOUNS or not last.endswith("s") or last.endswith("ss"):
        word = last
    elif last.endswith("oes"):
        word = last[:-2]
    elif last.endswith("ies"):
        word = last[:-3] + "y"
    else:
        word = last[:-1]
    return f"{head} {word}".strip()
STYLES = {"quick": "ready in about 20 minutes", "easy": "one pan, little washing up",
          "healthy": "light and full of vegetables", "vegetarian": "no meat", "vegan": "fully plant-based",
          "spicy": "with a good kick of chilli", "cheap": "on a budget"}


@dataclass(frozen=True)
class Request:
    """What the demo agent reads in a message."""

    ingredients: list[str]
    count: int
    kind: str  # "recipes", or the plural of the dish kind asked for
    ideas: tuple[str, ...]
    styles: list[str]
    pantry: bool = False  # the message mentions the pantry: the agent asks before using it

    @property
    def what(self) -> str:
        """The ingredients named, as a phrase ("tofu", "chicken and rice"), or "what you have"."""
        return _and(self.ingredients) if self.ingredients else GENERIC


def _clean(message: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]", " ", message)).strip().lower()


def read_request(message: str) -> Request:
    text = _clean(message)
    found: list[str] = []
    rest = f" {text} "
    for name in INGREDIENTS:
        # The name as listed, or its singular ("mushroom risotto" is about mushrooms)
        forms = sorted({name, as_modifier(name)}, key=len, reverse=True)
        pattern = rf"(?<![a-z])(?:{'|'.join(re.escape(f) for f in forms)})(?![a-z])"
        if re.search(pattern, rest):
            found.append(SINGULAR.get(name, name))
            rest = re.sub(pattern, " ", rest)
    found = sorted(dict.fromkeys(found), key=lambda n: text.find(as_modifier(n).split()[0]))[:3]
    count = 3
    m = re.search(rf"\b(\d+|{'|'.join(sorted(NUMBERS, key=len, reverse=True))})\s+(?:[a-z-]+\s+){{0,3}}?{DISH_NOUNS}\b",
                  text)
    if m:
        raw = m.group(1)
        count = int(raw) if raw.isdigit() else NUMBERS[raw]
    count = max(1, min(6, count))
    words = set(re.findall(r"[a-z]+", text))
    kind: str = "recipes"
    ideas: tuple[str, ...] = MAINS
    dish = next(((plural, dish_ideas) for keys, plural, dish_ideas in DISHES
                 if any(re.search(rf"(?<![a-z]){re.escape(k)}(?![a-z])", text) for k in keys)), None)
    for keys, plural, kind_ideas in ([] if dish else KINDS):
        if words & set(keys):
            kind, ideas = plural, kind_ideas
            break
    if dish:
        kind, ideas = dish
    styles = [STYLES[w] for w in STYLES if w in words]
    return Request(found, count, kind, ideas, styles, pantry="pantry" in words)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---- the pantry: the question and what the answer changes, about what the user named ----------

AMOUNTS = {"chicken": "2 lb of chicken"}  # what "the pantry" holds of an ingredient, when we say so


def _is_plural(name: str) -> bool:
    return as_modifier(name) != name and name not in MASS_NOUNS


def pantry_question(message: str) -> str:
    """The confirm a pantry request asks before step 1 changes the pantry: about the first
    ingredient the user named ("Use the tofu from your pantry?"), or about the pantry as a whole."""
    req = read_request(message)
    if not req.ingredients:
        return "Use what you have in your pantry?"
    first = req.ingredients[0]
    return f"Use the {AMOUNTS.get(first, first)} from your pantry?"


def pantry_note(message: str, used: bool) -> str:
    """What the reply says about the pantry once the user answered: the same ingredient the
    question named, used (yes) or left where it is and bought fresh (no)."""
    req = read_request(message)
    if not req.ingredients:
        return ("I used what you have in your pantry." if used
                else "I left your pantry as it was: these need nothing from it.")
    first = req.ingredients[0]
    if used:
        return f"I used the {AMOUNTS.get(first, first)} from your pantry."
    verb = "are" if _is_plural(first) else "is"
    return (f"I left your pantry as it was: the {first} {verb} still there"
            + ("." if first in AMOUNTS else f", so fresh {first} {verb} on the shopping list."))


# ---- the plan: steps that fit the request ------------------------------------------------------

GENERIC_STEPS = [
    "Check the pantry", "Search recipes", "Compare recipes", "Build the shopping list",
    "Plan the cooking steps", "Estimate nutrition", "Check cooking times", "Suggest wine pairings",
    "Find substitutions", "Scale the portions", "Check for allergens", "Sort the shopping list by aisle",
    "Time the prep", "Pick side dishes", "Check the oven plan", "Suggest leftovers",
    "Write storage tips", "Check seasonality", "Estimate the cost", "Plan the plating",
]


def plan_labels(message: str, n: int) -> list[str]:
    """``n`` step labels (1-20, all different) for ``message``: a request that names its
    ingredients or dish is searched for those (and the pantry checked for them only when the user
    mentioned it); one that names nothing falls back to the generic plan, pantry first."""
    req = read_request(message)
    named = bool(req.ingredients) or req.kind != "recipes"
    if not named and not req.pantry:
        return GENERIC_STEPS[:n]
    kind = "recipes" if req.kind == "recipes" else req.kind
    first: list[str] = []
    if req.pantry:
        first.append(f"Check the pantry for the {req.ingredients[0]}" if req.ingredients else "Check the pantry")
    first.append(f"Search {kind} with {req.what}" if req.ingredients else f"Search {kind}")
    first += [f"Compare the {kind}", f"Pick the best {req.count}" if req.count > 1 else "Pick the best one"]
    if req.pantry and req.ingredients:
        first.append("Build the shopping list around the pantry")
    skip = {"Check the pantry", "Search recipes", "Compare recipes"}
    if req.pantry and req.ingredients:
        skip.add("Build the shopping list")
    tailored = [*first, *(label for label in GENERIC_STEPS if label not in skip)]
    return list(dict.fromkeys(tailored))[:n]


def reply_text(message: str, pantry_note: str = "") -> str:
    """The reply to ``message``: a header naming the ingredients, ``count`` ideas, a closing line."""
    req = read_request(message)
    seed = int(hashlib.sha256(_clean(message).encode()).hexdigest()[:8], 16)
    main = as_modifier(req.ingredients[0]) if req.ingredients else FALLBACK.get(req.kind, "vegetable")
    lines = []
    for n in range(req.count):
        filled = req.ideas[(seed + n) % len(req.ideas)].replace("{i}", main)
        if len(req.ingredients) > 1 and n % 2 == 1:
            filled += f", plus the {req.ingredients[1 + (n // 2) % (len(req.ingredients) - 1)]}"
        lines.append(f"{n + 1}. {filled[0].upper()}{filled[1:]}")
    what = _and(req.ingredients) if req.ingredients else GENERIC
    noun = req.kind if req.count > 1 else req.kind.removesuffix("es" if req.kind == "lunches" else "s")
    header = f"Here {'is' if req.count == 1 else 'are'} {req.count} {noun} with {what}"
    header += (", " + " and ".join(req.styles) if req.styles else "") + ":"
    closing = "Want the full recipe for one of them?" if req.count > 1 else "Want the full recipe?"
    return "\n".join([header, *lines, *([pantry_note.strip()] if pantry_note else []), closing])
