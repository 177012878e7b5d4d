"""The cost model: counted requests per job priced at AWS list prices, vs Step Functions Standard.

The prices are list prices we assumed (us-east-1, on-demand, no free tier), written here with the
date we read them; the bench prints them with the result. Compute (Lambda) is left out of both
sides: the agent's work costs the same whoever orchestrates it.
"""

from __future__ import annotations

from typing import Any

PRICES_AS_OF = "2025-06 (list prices assumed; check https://aws.amazon.com/dynamodb/pricing/on-demand/, "\
               "https://aws.amazon.com/sqs/pricing/, https://aws.amazon.com/step-functions/pricing/)"
PRICES_USD: dict[str, float] = {
    "dynamodb_write_request_unit_per_million": 0.625,   # on-demand WRU, us-east-1 (since Nov 2024)
    "dynamodb_read_request_unit_per_million": 0.125,    # on-demand RRU, us-east-1 (since Nov 2024)
    "sqs_standard_request_per_million": 0.40,           # standard queue, per 64 KB request, past free tier
    "step_functions_standard_transition_per_million": 25.0,  # $0.025 per 1,000 state transitions
}
# The same work as a Step Functions Standard state machine: one task state for think, one per
# step, one for the reply. A real one adds Choice/Catch/Retry states; this is the floor of its bill.
SFN_TRANSITIONS_PER_JOB = 1 + 5 + 1


def ours_per_job(requests: dict[str, dict[str, float]], exclude_targets: tuple[str, ...]) -> dict[str, float]:
    """WRU, RRU and SQS requests per job, leaving out calls to ``exclude_targets`` (the agent's own tables)."""
    wru = sum(requests.get("wru", {}).values())
    rru = sum(requests.get("rru", {}).values())
    for key, n in requests.get("by_target", {}).items():
        op, _, target = key.partition(" ")
        if target in exclude_targets:
            if op in ("dynamodb.UpdateItem", "dynamodb.PutItem", "dynamodb.DeleteItem"):
                wru -= n  # the agent's side-effect items are small: one unit each
            elif op.startswith("dynamodb."):
                rru -= n
    sqs = sum(n for op, n in requests.get("calls", {}).items() if op.startswith("sqs."))
    return {"dynamodb_wru": round(wru, 2), "dynamodb_rru": round(rru, 2), "sqs_requests": round(sqs, 2)}


def cost_per_million_jobs(units: dict[str, float]) -> dict[str, float]:
    """USD per million jobs: ours from counted units, Step Functions from its transitions."""
    p = PRICES_USD
    ours = (units["dynamodb_wru"] * p["dynamodb_write_request_unit_per_million"]
            + units["dynamodb_rru"] * p["dynamodb_read_request_unit_per_million"]
            + units["sqs_requests"] * p["sqs_standard_request_per_million"])
    sfn = SFN_TRANSITIONS_PER_JOB * p["step_functions_standard_transition_per_million"]
    return {"alfred_jobs": round(ours, 2), "step_functions_standard": round(sfn, 2)}


def price_notes() -> dict[str, Any]:
    return {"as_of": PRICES_AS_OF, "usd": PRICES_USD, "step_functions_transitions_per_job": SFN_TRANSITIONS_PER_JOB,
            "assumptions": ["DynamoDB UpdateItem/DeleteItem counted as 1 WRU (job items < 1 KB)",
                            "strongly consistent reads: 1 RRU per 4 KB; BatchGetItem: 1 RRU per key",
                            "SQS idle polling (empty ReceiveMessage) is a fixed cost per queue, left out",
                            "the agent's own side-effect writes are left out of both sides",
                            "Lambda compute left out of both sides",
                            "one client watching the job over SSE (the stream's reads) is included"]}
