"""The cluster's pages: the overview of its nodes, a node's page, draining a node."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from nodes import selectors, services


@login_required
def cluster(request):
    return render(request, "cluster/overview.html", {"nodes": selectors.nodes()})


@login_required
def node_detail(request, name):
    node = selectors.nodes().filter(name=name).first()
    if node is None:
        raise Http404("No such node.")
    running = {"name": node.name, "running": node.running}
    selectors.jobs_on(request.user, [running])
    return render(request, "cluster/node.html", {
        "node": node, "attempts": selectors.attempts_on(request.user, node),
        "running": running})


@login_required
@require_POST
def node_drain(request, name, draining: bool):
    """Staff: the node finishes what it runs and takes nothing new, or takes jobs again."""
    if not request.user.is_staff:
        return HttpResponse("staff only\n", status=403, content_type="text/plain")
    node = selectors.nodes().filter(name=name).first()
    if node is None:
        raise Http404("No such node.")
    services.drain_node(node=node, draining=draining, actor=request.user, via="page")
    return redirect("node-detail", name=node.name)

