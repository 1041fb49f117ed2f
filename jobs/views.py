"""The browser's pages: job list, submit form, job page. Thin: they call services/selectors."""

import json
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from accounts import teams
from accounts.auth import key_from_header, user_for_key
from audit import feed
from jobs import admission, forms, gangs, planner, prometheus, selectors, services
from jobs.lifecycle import TransitionRefused
from jobs.models import JobState
from workers.kinds import all_kinds, examples, get_kind

LIST_PAGE = 50
SORTS = {"newest": "-id", "oldest": "id"}


def _positive_int(raw: str | None) -> int | None:
    try:
        value = int(raw or "")
    except ValueError:
        return None
    return value if value > 0 else None


def _duration(job) -> str:
    """How long the job ran ("4 s", "3 min 20 s", "2 h 5 min"); "" if it has not started."""
    if job.started_at is None:
        return ""
    seconds = int(((job.finished_at or timezone.now()) - job.started_at).total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@login_required
def job_list(request):
    """Jobs as submitted (partitions are on their parent's page), filtered by state, kind and
    name on the server, newest or oldest first, a page at a time by id (no OFFSET)."""
    state = request.GET.get("state") or None
    if state not in JobState.values:
        state = None
    kind = (request.GET.get("kind") or "").strip() or None
    q = (request.GET.get("q") or "").strip()[:200] or None
    sort = request.GET.get("sort") if request.GET.get("sort") in SORTS else "newest"
    cursor = _positive_int(request.GET.get("from"))
    jobs = selectors.job_list(request.user, state=state, kind=kind, q=q)
    if cursor:
        jobs = jobs.filter(pk__lt=cursor) if sort == "newest" else jobs.filter(pk__gt=cursor)
    page = list(jobs.order_by(SORTS[sort])[:LIST_PAGE + 1])
    more = len(page) > LIST_PAGE
    page = page[:LIST_PAGE]
    for job in page:
        job.ran_for = _duration(job)
    keep = {"state": state or "", "kind": kind or "", "q": q or "", "sort": sort}
    return render(request, "jobs/list.html", {
        "jobs": page, "state": state, "states": JobState.values, "kind": kind or "", "q": q or "",
        "sort": sort, "kinds": [k.name for k in all_kinds()],
        "internal_kinds": ",".join(k.name for k in all_kinds(internal=True) if k.internal),
        "next_query": urlencode({**keep, "from": page[-1].pk}) if more else "",
        "first_query": urlencode(keep) if cursor else "",
        "state_query": urlencode({k: v for k, v in keep.items() if k != "state" and v}),
        "live_new": sort == "newest" and not cursor,
    })


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
    fields = forms.fields_for(schema, {
        **values, **typed, **{k: v for k, v in values.items() if isinstance(v, bool)}})
    context = {
        "examples": examples(),
        "kinds": kinds, "kind": kind, "fields": fields,
        "errors": errors, "error_summary": _error_summary(errors, fields),
        "any_required": any(f.required for f in fields),
        "name": request.POST.get("name", ""),
        "teams": teams.acting_teams(request.user),
        "priority": request.POST.get("priority", "0"),
        "nodes": request.POST.get("nodes", "1"),
        "slots_per_node": request.POST.get("slots_per_node", "1"),
        "team": request.POST.get("team") or getattr(teams.default_team(request.user), "name", ""),
    }
    return render(request, "jobs/new.html", context, status=400 if errors else 200)


FORM_FIELDS = {"name": "Name", "team": "Team", "priority": "Priority"}


def _error_summary(errors: dict, fields: list[forms.ParamField]) -> list[dict]:
    """Every error, for the box at the top of the form: a field's links to the field; one that
    belongs to no field (the parameters as a whole, the kind, the queue) is shown only there."""
    labels = {**FORM_FIELDS, **{f.name: f.label for f in fields}}
    return [{"field": field if field in labels else "", "label": labels.get(field, ""),
             "messages": messages if isinstance(messages, list) else [str(messages)]}
            for field, messages in errors.items()]


def _flatten(errors: dict) -> dict:
    """Service errors ({"params": {"seconds": [...]}, "name": [...]}) keyed by form field."""
    flat = {}
    for field, messages in errors.items():
        if isinstance(messages, dict):
            flat.update(messages)
        else:
            flat[field] = messages
    # pydantic's "Value error, " prefix says nothing to a person reading the form.
    return {field: [str(m).removeprefix("Value error, ") for m in messages]
            if isinstance(messages, list) else messages for field, messages in flat.items()}


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
        "cancelled_by": selectors.cancelled_by(job) if job.cancel_requested_at else None,
        "params_json": json.dumps(job.params, indent=2, sort_keys=True),
        "result_json": "" if job.result is None else json.dumps(job.result, indent=2),
        "sweep": _sweep_trials(job) if job.kind == "train.sweep" else None,
        "part_word": _part_word(job.kind),
        "parent_part_word": _part_word(job.parent.kind) if job.parent_id else "",
    })


def _part_word(kind_name: str) -> str:
    """What a kind's fan-out children are called: "partition", or a sweep's "trial"."""
    return getattr(get_kind(kind_name), "part_word", "partition")


def _sweep_trials(job) -> dict | None:
    """A finished sweep's trials as a table: each one's parameters and score, the best marked."""
    result = job.result if isinstance(job.result, dict) else {}
    trials = result.get("trials")
    if not isinstance(trials, list) or not trials:
        return None
    names = sorted({name for trial in trials for name in (trial.get("params") or {})})
    best = (result.get("best") or {}).get("trial")
    rows = [{"trial": trial.get("trial"), "job": trial.get("job"),
             "values": [json.dumps((trial.get("params") or {}).get(name)) for name in names],
             "score": trial.get("val_score"), "iterations": trial.get("iterations"),
             "seconds": trial.get("seconds"), "best": trial.get("trial") == best}
            for trial in trials]
    return {"names": names, "rows": rows, "metric": result.get("metric", "score")}


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


FEED_PAGE = 50


@login_required
def events(request):
    """The cluster's feed, newest first, a page at a time by id (no OFFSET)."""
    cursor = _positive_int(request.GET.get("from"))
    entries = selectors.feed(request.user)
    if cursor:
        entries = entries.filter(pk__lt=cursor)
    page = list(entries[:FEED_PAGE + 1])
    more = len(page) > FEED_PAGE
    page = page[:FEED_PAGE]
    for entry in page:
        entry.level = feed.LEVELS.get(entry.kind, "info")
    return render(request, "cluster/events.html", {
        "events": page, "first": bool(cursor), "live": not cursor,
        "older": page[-1].pk if more else None})


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
    return redirect("job-detail", job_id=job.pk)


@login_required
@require_POST
def job_retry(request, job_id):
    """A new job with the same kind and parameters; its page opens."""
    job = selectors.job_for(request.user, job_id)
    if job is None:
        raise Http404("No such job.")
    try:
        new = services.retry_job(job=job, owner=request.user, via="page")
    except services.NotPermitted:
        return HttpResponse("you may only view this team's jobs\n", status=403,
                            content_type="text/plain")
    except services.InvalidJob as exc:
        reasons = "; ".join(f"{field}: {' '.join(map(str, messages))}"
                            for field, messages in _flatten(exc.errors).items())
        return HttpResponse(f"cannot retry: {reasons}\n", status=exc.status,
                            content_type="text/plain")
    return redirect("job-detail", job_id=new.pk)


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


# The Planner page: its answers come from POST /api/v1/capacity/plan/ in the browser.
PLANNER_EXAMPLE = {"kind": "etl.clickstream", "rows": 800_000_000, "window_s": 21_600}


@login_required
def planner_page(request):
    kinds = [kind.name for kind in all_kinds()]
    rows, window = PLANNER_EXAMPLE["rows"], PLANNER_EXAMPLE["window_s"]
    return render(request, "usage/planner.html", {
        "kinds": kinds, "example": PLANNER_EXAMPLE,
        "example_text": (f"{rows / 1e6:,.0f} million clickstream events in {window / 3600:g} "
                         f"hours is {rows / window:,.0f} rows per second"),
        "measured": [name for name in kinds if planner.measure(name) is not None]})

