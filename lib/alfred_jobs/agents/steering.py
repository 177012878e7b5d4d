"""How the demo agent takes messages steered into a running job (``ctx.steers``): it re-plans what
is left of the request with them. Kept apart from the demo's wording (``demo_text``)."""

from __future__ import annotations

import re

MEAT = re.compile(r"\b(chicken|beef|pork|lamb|bacon|ham|sausages?|turkey|steak|mince|veal|duck|chorizo)\b",
                  re.IGNORECASE)
MEAT_FREE = re.compile(r"\b(vegetarian|veggie|vegan|meat[- ]?free|meatless|no meat)\b", re.IGNORECASE)


def with_steers(message: str, steers: list[str]) -> str:
    """The request as amended by the steers, in order: "…make it vegetarian" drops the meat from
    it; any other steer is added to it ("…and use the rice")."""
    for steer in steers:
        if MEAT_FREE.search(steer):
            message = re.sub(r"\s{2,}", " ", MEAT.sub("", message)).strip() + " vegetarian"
        else:
            message = f"{message} {steer}"
    return message


def steer_note(steers: list[str]) -> str:
    """The line of the reply that says the steers were taken."""
    if not steers:
        return ""
    if any(MEAT_FREE.search(s) for s in steers):
        return "As you asked while I worked, I made it vegetarian: no meat in any of them."
    return "I took in what you added while I worked: " + "; ".join(s.strip() for s in steers) + "."
