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
        "example_text": (f"{EXAMPLE['rows'] / 1e6:,.0f} million clickstream events in "
                         f"{EXAMPLE['window_s'] / 3600:g} hours is "
                         f"{EXAMPLE['rows'] / EXAMPLE['window_s']:,.0f} rows per second"),
        "measured": [name for name in kinds if planner.measure(name) is not None]})
