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


def _clean(message: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]", " ", message)).strip().lower()


def read_request(message: str) -> Request:
    text = _clean(message)
    found: list[str] = []
    rest = f" {text} "
    for name in INGREDIENTS:
        if re.search(rf"(?<![a-z]){re.escape(name)}(?![a-z])", rest):
            found.append(SINGULAR.get(name, name))
            rest = re.sub(rf"(?<![a-z]){re.escape(name)}(?![a-z])", " ", rest)
    found = sorted(dict.fromkeys(found), key=lambda n: text.find(n.split()[0]))[:3]
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
    for keys, plural, kind_ideas in KINDS:
        if words & set(keys):
            kind, ideas = plural, kind_ideas
            break
    styles = [STYLES[w] for w in STYLES if w in words]
    return Request(found, count, kind, ideas, styles)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


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
