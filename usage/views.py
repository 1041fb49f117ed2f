"""The Usage page: its figures come from the API (usage.api) in the browser."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def usage_page(request):
    return render(request, "usage/usage.html")
