"""The Usage and Planner pages: their figures come from the API (usage.api) in the browser."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from usage import planner
from workers.kinds import all_kinds

EXAMPLE = {"kind": "etl.clickstream", "rows": 800_000_000, "window_s": 21_600}


@login_required
def usage_page(request):
    return render(request, "usage/usage.html")


@login_required
def planner_page(request):
    kinds = [kind.name for kind in all_kinds()]
    return render(request, "usage/planner.html", {
        "kinds": kinds, "example": EXAMPLE,
        "example_rate": round(EXAMPLE["rows"] / EXAMPLE["window_s"]),
        "measured": [name for name in kinds if planner.measure(name) is not None]})
