"""Where a single job's submit spends its time: the steps of POST /api/v1/jobs/, timed in-process.

    python -m bench.submit              (300 requests; about 30 s)
    python -m bench.submit --requests 50

It starts the same cluster as bench.run (a throwaway PostgreSQL and Redis, the web server, the
ingester, the reconciler and two worker nodes), then, in this process, sends one diag.noop job
at a time through Django's test client with the bench user's token: the whole middleware stack,
the view, the transaction, the send to the broker after the commit, without daphne or a socket
(bench.run's HTTP peer measures those). Each step is timed by wrapping the function that does
it, so the figures are the portal's own code as it runs:

    token           the API token's lookup and the sign-in lockout check (TokenAuthentication)
      lockout       of which: the lockout check alone (accounts.guard.locked_out)
    throttles       the request rate limits (DRF throttles, counters in Redis)
    parameters      the job's spec checked against its kind (jobs.services.validate_spec)
      team          of which: the team it goes to when none is named (accounts.teams.default_team)
    rows            the job's and its attempt's rows (jobs.lifecycle.create)
    admission       the admission pass that queues it if there is room (jobs.admission.admit)
    audit           its audit row (jobs.services.record_many)
    send            after the commit: the dispatch marker and the Celery message (dispatch.send)

and the view (JobList.post) and the whole request around them. The p50 of each step is
printed with the whole's: what is left is Django's and DRF's own handling (middleware, parsing,
the answer's serializer). The durable minimum, what no submit can skip (its rows, the commit
and the send), is printed beside it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
from collections import defaultdict

from bench.run import Bench, begin, guarded, log, percentile
from bench.run import parse_args as run_args

STEPS = [  # (name, module, function, the step it runs inside of, if any)
    ("token", "accounts.auth", "TokenAuthentication.authenticate", None),
    ("lockout", "accounts.guard", "locked_out", "token"),
    ("throttles", "rest_framework.views", "APIView.check_throttles", None),
    ("parameters", "jobs.services", "validate_spec", None),
    ("team", "accounts.teams", "default_team", "parameters"),
    ("rows", "jobs.lifecycle", "create", None),
    ("admission", "jobs.admission", "admit", None),
    ("audit", "jobs.services", "record_many", None),
    ("commit", "django.db.backends.base.base", "BaseDatabaseWrapper.commit", None),
    ("send", "jobs.dispatch", "send", None),
    ("view", "jobs.api.views", "JobList.post", "all"),
]
DURABLE = ("rows", "commit", "send")


def timed(samples: dict[str, list[float]], name: str, module: str, attribute: str) -> None:
    """Wrap module.attribute (a function, or Class.method) so each call's time is recorded."""
    owner = importlib.import_module(module)
    *path, last = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, last)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            samples[name].append(time.perf_counter() - started)

    setattr(owner, last, wrapper)


def measure_submits(bench: Bench, requests: int, warm: int) -> dict[str, list[float]]:
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    import django

    django.setup()
    from django.test import Client

    samples: dict[str, list[float]] = defaultdict(list)
    for name, module, attribute, _ in STEPS:
        timed(samples, name, module, attribute)
    client = Client(HTTP_AUTHORIZATION=f"Token {bench.token}", HTTP_HOST="127.0.0.1")
    for i in range(warm + requests):
        if i == warm:
            samples.clear()
        time.sleep(bench.args.gap)
        started = time.perf_counter()
        answer = client.post("/api/v1/jobs/", {"kind": "diag.noop", "name": "bench-submit"},
                             content_type="application/json")
        samples["request"].append(time.perf_counter() - started)
        if answer.status_code != 201:
            raise RuntimeError(f"POST /api/v1/jobs/ answered {answer.status_code}: "
                               f"{answer.content[:300]!r}")
    return samples


def report(samples: dict[str, list[float]], requests: int) -> None:
    def p50(name: str) -> float:
        return 1000 * percentile(samples[name], 50) if samples.get(name) else 0.0

    print()
    print("=" * 100)
    print(f"Where a single job's submit spends its time ({requests} requests, in-process, p50 "
          "of each step)")
    print("=" * 100)
    for name, module, attribute, inside in STEPS:
        calls = len(samples.get(name, []))
        indent = "    " if inside and inside != "all" else "  "
        label = f"{name} (in {inside})" if inside and inside != "all" else name
        print(f"{indent}{label:<22} {p50(name):7.2f} ms   {calls / requests:4.1f} a request   "
              f"{module}.{attribute}")
    own = sum(p50(name) for name, _, _, inside in STEPS if inside is None)
    print(f"  {'steps, summed':<22} {own:7.2f} ms   those not inside another")
    print(f"  {'request':<22} {p50('request'):7.2f} ms   the whole, through the middleware: "
          "what the steps leave is Django's and DRF's own")
    durable = sum(p50(name) for name in DURABLE)
    print(f"  {'durable part':<22} {durable:7.2f} ms   what no submit can skip: "
          f"{' + '.join(DURABLE)}")
    print("=" * 100)
    print(f"RESULT submit p50: {p50('request'):.2f} ms in-process; steps "
          + ", ".join(f"{name} {p50(name):.2f}" for name, *_ in STEPS if name != "view")
          + f"; durable part {durable:.2f} ms", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.submit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed submits")
    parser.add_argument("--warm", type=int, default=30, help="untimed submits first")
    parser.add_argument("--gap", type=float, default=0.01,
                        help="seconds of idle before each submit")
    parser.add_argument("--verbose", action="store_true",
                        help="show the cluster processes' output")
    args = parser.parse_args(argv)
    cluster = run_args(["--quick"] + (["--verbose"] if args.verbose else []))
    for name, value in vars(cluster).items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = begin(f"submit benchmark: {args.requests} single-job submits, in-process")
    bench = Bench(args)

    def measure() -> bool:
        bench.setup()
        log(f"{args.requests} submits (after {args.warm} untimed)")
        report(measure_submits(bench, args.requests, args.warm), args.requests)
        return True

    return guarded(bench, started, measure, strict=False)


if __name__ == "__main__":
    sys.exit(main())
