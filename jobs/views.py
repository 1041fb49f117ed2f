"""The browser's pages: job list, submit form, job page. Thin: they call services/selectors."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from accounts import teams
from accounts.auth import key_from_header, user_for_key
from jobs import admission, forms, gangs, prometheus, selectors, services
from jobs.lifecycle import TransitionRefused
from jobs.models import JobState
from workers.kinds import all_kinds, examples, get_kind

LIST_PAGE = 50


@login_required
def job_list(request):
    state = request.GET.get("state") or None
    if state not in JobState.values:
        state = None
    jobs = selectors.job_list(request.user, state=state)[:LIST_PAGE]
    return render(request, "jobs/list.html",
                  {"jobs": jobs, "state": state, "states": JobState.values})


@login_required
def job_new(request):
    kinds = all_kinds()
    kind = get_kind(request.POST.get("kind") or request.GET.get("kind") or "") or \
        get_kind("diag.sleep") or kinds[0]
    schema = kind.schema()
    errors: dict = {}
    values: dict = {}
    if request.method == "POST":
        values, errors = forms.params_from_post(schema, request.POST)
        data = {"kind": kind.name, "params": values, "name": request.POST.get("name", ""),
                "team": request.POST.get("team", "")}
        for field in ("priority", "nodes", "slots_per_node"):
            text = request.POST.get(field, "").strip()
            if text:
                try:
                    data[field] = int(text)
                except ValueError:
                    errors[field] = ["must be a whole number"]
        if not errors:
            try:
                spec = services.validate_spec(data, owner=request.user)
            except services.InvalidJob as exc:
                errors = _flatten(exc.errors)
            else:
                try:
                    job, _ = services.submit_job(owner=request.user, spec=spec, via="page")
                except services.InvalidJob as exc:
                    errors = _flatten(exc.errors)
                else:
                    return redirect("job-detail", job_id=job.pk)
    # A form sent back shows what was typed, not what it was parsed into.
    typed = {name[len("param-"):]: value for name, value in request.POST.items()
             if name.startswith("param-")}
    context = {
        "examples": examples(),
        "kinds": kinds, "kind": kind, "fields": forms.fields_for(schema, {
            **values, **typed, **{k: v for k, v in values.items() if isinstance(v, bool)}}),
        "errors": errors, "name": request.POST.get("name", ""),
        "teams": teams.acting_teams(request.user),
        "priority": request.POST.get("priority", "0"),
        "nodes": request.POST.get("nodes", "1"),
        "slots_per_node": request.POST.get("slots_per_node", "1"),
        "team": request.POST.get("team") or getattr(teams.default_team(request.user), "name", ""),
    }
    return render(request, "jobs/new.html", context, status=400 if errors else 200)


def _flatten(errors: dict) -> dict:
    """Service errors ({"params": {"seconds": [...]}, "name": [...]}) keyed by form field."""
    flat = {}
    for field, messages in errors.items():
        if isinstance(messages, dict):
            flat.update(messages)
        else:
            flat[field] = messages
    return flat


@login_required
def job_detail(request, job_id):
    job = selectors.job_for(request.user, job_id)
    if job is None:
        raise Http404("No such job.")
    return render(request, "jobs/detail.html", {
        "job": job, "log_lines": selectors.job_log_tail(job),
        "attempts": job.attempts.order_by("number"), "artifacts": selectors.job_artifacts(job),
        "ranks": gangs.attempt_ranks(job) if job.is_gang else [],
        "speedup": gangs.speedup(job),
        "place_in_line": admission.place_in_line(job),
        "can_act": teams.can_act(request.user, job.team_id),
    })


@login_required
@require_POST
def job_example(request, index):
    """Submit one of the ready-made examples as it is."""
    offered = examples()
    if not 0 <= index < len(offered):
        raise Http404("No such example.")
    example = offered[index]
    try:
        spec = services.validate_spec(
            {key: example[key] for key in ("kind", "name", "params", "nodes") if key in example},
            owner=request.user)
        job, _ = services.submit_job(owner=request.user, spec=spec, via="page")
    except services.InvalidJob as exc:
        kinds = all_kinds()
        return render(request, "jobs/new.html", {
            "examples": offered, "kinds": kinds, "kind": kinds[0], "fields": [],
            "example_errors": {index: _flatten(exc.errors)}}, status=exc.status)
    return redirect("job-detail", job_id=job.pk)


@login_required
def job_log_download(request, job_id):
    """The whole log as plain text, streamed in pages (a log can be long)."""
    job = selectors.job_for(request.user, job_id)
    if job is None:
        raise Http404("No such job.")

    def lines():
        after = 0
        while page := selectors.job_logs(job, after=after):
            yield "".join(f"{line.ts:%Y-%m-%d %H:%M:%S} [{line.attempt}] "
                          f"{f'rank {line.rank} ' if job.is_gang else ''}{line.level}: "
                          f"{line.text}\n" for line in page)
            after = page[-1].pk

    return StreamingHttpResponse(lines(), content_type="text/plain; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="job-{job.pk}.log"'})


@login_required
def cluster(request):
    return render(request, "cluster/overview.html", {"nodes": selectors.nodes()})


@login_required
def node_detail(request, name):
    node = selectors.nodes().filter(name=name).first()
    if node is None:
        raise Http404("No such node.")
    return render(request, "cluster/node.html", {
        "node": node, "attempts": selectors.node_attempts(request.user, node)})


@login_required
@require_POST
def job_cancel(request, job_id):
    job = selectors.job_for(request.user, job_id)
    if job is None:
        raise Http404("No such job.")
    try:
        services.cancel_job(job=job, actor=request.user, via="page")
    except TransitionRefused:
        pass  # already finished: the page shows how
    except services.NotPermitted:
        return HttpResponse("you may only view this team's jobs\n", status=403,
                            content_type="text/plain")
    return redirect("job-detail", job_id=job.pk)


def metrics(request):
    """Prometheus scrape: a staff member's session, or a staff member's API token."""
    user = request.user
    key = key_from_header(request.META.get("HTTP_AUTHORIZATION", ""))
    if key:
        user = user_for_key(key)
    if user is None or not user.is_authenticated:
        return HttpResponse("authentication required\n", status=401, content_type="text/plain",
                            headers={"WWW-Authenticate": "Token"})
    if not user.is_staff:
        return HttpResponse("staff only\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(prometheus.registry()), content_type=CONTENT_TYPE_LATEST)
