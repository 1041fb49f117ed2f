"""portalctl: submit, list, follow and cancel the cluster portal's jobs from a terminal or a
script. Human tables by default, `--json` for scripts; see `portalctl COMMAND --help`.

Exit codes: 0 done (a job that succeeded), 1 a job that failed, no such job, or a job that had
already ended, 2 usage, configuration, connection or authentication errors and rejected
submissions, 3 a job that was cancelled, 124 a wait that timed out, 130 interrupted."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import sys
from pathlib import Path

from cli import config
from cli.api import Api
from cli.errors import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    OK,
    TIMEOUT,
    CliError,
    Invalid,
    NotFound,
)
from cli.follow import Follower, TimedOut, log_line
from cli.format import (
    JOB_HEADERS,
    NODE_HEADERS,
    job_block,
    job_row,
    log_text,
    node_row,
    outcome,
    parse_label,
    parse_param,
    percent,
    table,
)

STATES = ["pending", "queued", "running", "succeeded", "failed", "cancelled"]
EXIT_FOR_STATE = {"succeeded": OK, "failed": FAILED, "cancelled": CANCELLED}


class Out:
    """Where results go: stdout (JSON only with --json); notes and errors go to stderr."""

    def __init__(self, as_json: bool, stdout=None, stderr=None):
        self.json = as_json
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def result(self, human, data=None) -> None:
        """`human` (text) without --json, `data` as one JSON document with it."""
        if self.json:
            json.dump(data, self.stdout, indent=2)
            self.stdout.write("\n")
        elif human is not None:
            print(human, file=self.stdout)
        self.stdout.flush()

    def line(self, data) -> None:
        """One JSON Lines record (--json) for streams such as a log."""
        self.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
        self.stdout.flush()

    def text(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def note(self, text: str) -> None:
        if not self.json:
            print(text, file=self.stderr, flush=True)

    def error(self, exc: CliError) -> None:
        if self.json:
            body = {"error": exc.message, **exc.details}
            if isinstance(exc, Invalid):
                body["messages"] = exc.lines
            print(json.dumps(body), file=self.stderr, flush=True)
            return
        print(f"portalctl: error: {exc.message}", file=self.stderr)
        for line in getattr(exc, "lines", []):
            print(f"  {line}", file=self.stderr)
        self.stderr.flush()


class StatusLine:
    """A one-line live status on a terminal's stderr while waiting (nothing elsewhere)."""

    def __init__(self, out: Out):
        self.stream = out.stderr
        self.live = not out.json and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.shown = False

    def __call__(self, job: dict) -> None:
        if not self.live:
            return
        text = f"job {job.get('id')} {job.get('state')} {percent(job.get('progress'))}"
        if job.get("state") == "pending" and isinstance(job.get("place_in_line"), int):
            text += f" (#{job['place_in_line']} in line)"
        if job.get("node"):
            text += f" on {job['node']}"
        if job.get("message"):
            text += f"  {job['message']}"
        width = shutil.get_terminal_size((80, 20)).columns - 1
        self.stream.write("\r\x1b[K" + text[:width])
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


# -- commands ------------------------------------------------------------------------------------


def connect(env) -> Api:
    url, token = config.resolve(env)
    return Api(url, token)


def read_token(stdin=None) -> str:
    stdin = stdin or sys.stdin
    try:
        if stdin.isatty():
            token = getpass.getpass("API token: ")
        else:  # piped: `echo "$TOKEN" | portalctl login`, so it is in no command line
            token = stdin.readline()
    except EOFError:
        token = ""
    token = token.strip()
    if not token:
        raise CliError("no token given")
    return token


def cmd_login(args, out: Out, env) -> int:
    saved = config.load(env)
    url = config.normalize_url(args.url or env.get("PORTAL_URL") or saved.get("url")
                               or config.DEFAULT_URL)
    token = args.token or read_token()
    api = Api(url, token)
    try:
        api.kinds()  # proves the URL is a portal and the token is good
    except NotFound:
        raise CliError(f"no portal API at {url} (404 for /api/v1/kinds/)") from None
    path = config.save(url, token, env)
    out.result(f"logged in to {url}; token saved in {path}", {"url": url, "config": str(path)})
    return OK


def load_spec_file(name: str):
    try:
        if name == "-":
            text, suffix = sys.stdin.read(), ""
        else:
            path = Path(name)
            text, suffix = path.read_text(encoding="utf-8"), path.suffix.lower()
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        if suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)  # YAML, and JSON too (JSON is YAML)
    except Exception as exc:
        raise CliError(f"{name} is not valid {'JSON' if suffix == '.json' else 'YAML'}: "
                       f"{' '.join(str(exc).split())}") from None


def build_spec(args) -> dict:
    if args.file:
        data = load_spec_file(args.file)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise CliError(f"{args.file} must hold an object (a mapping), not a "
                           f"{type(data).__name__}")
        spec = {"kind": args.kind, "params": data} if args.kind else dict(data)
    else:
        spec = {"kind": args.kind}
    if not spec.get("kind"):
        raise CliError("which kind? `portalctl submit KIND ...`, or a file with a \"kind\" "
                       "(see `portalctl kinds`)")
    params = spec.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise CliError("the job's params must be an object (a mapping)")
    spec["params"] = {**params, **dict(args.param or [])}
    for field in ("name", "team", "queue", "priority", "cpus", "gpus", "max_attempts", "nodes",
                  "slots_per_node"):
        value = getattr(args, field)
        if value is not None:
            spec[field] = value
    if args.label:
        labels = spec.get("labels")
        if labels is None:
            labels = {}
        if not isinstance(labels, dict):
            raise CliError("the job's labels must be an object (a mapping)")
        spec["labels"] = {**labels, **dict(args.label)}
    if args.after:
        spec["after"] = [*(spec.get("after") or []), *args.after]
    return spec


def cmd_submit(args, out: Out, env) -> int:
    if args.timeout is not None and not args.wait:
        raise CliError("--timeout applies to --wait")
    spec = build_spec(args)
    api = connect(env)
    try:
        job = api.submit(spec)
    except Invalid as exc:
        raise Invalid(exc.errors, "the portal rejected the job") from None
    if args.wait:
        out.note(f"submitted job {job['id']}")
        return follow_to_end(api, job["id"], args, out)
    out.result(job["id"], job)
    return OK


def cmd_list(args, out: Out, env) -> int:
    api = connect(env)
    jobs = api.jobs(limit=args.limit, page_size=args.page_size, state=args.state,
                    kind=args.kind, q=args.query)
    out.result(table(JOB_HEADERS, [job_row(j) for j in jobs]) if jobs else "no jobs", jobs)
    return OK


def cmd_status(args, out: Out, env) -> int:
    job = connect(env).job(args.id)
    out.result(job_block(job), job)
    return OK


def cmd_logs(args, out: Out, env) -> int:
    if args.timeout is not None and not args.follow:
        raise CliError("--timeout applies to -f")
    api = connect(env)

    def show(line: dict) -> None:
        if out.json:
            out.line(line)
        else:
            out.text(log_text(line))

    if not args.follow:
        for line in api.log_lines(args.id):
            show(log_line(line))
        return OK
    try:
        job = Follower(api, args.id, on_log=show, timeout=args.timeout).run()
    except TimedOut as exc:
        out.note(f"timed out after {args.timeout:g} s: job {args.id} still "
                 f"{exc.job.get('state')}")
        return TIMEOUT
    out.note(outcome(job))
    return EXIT_FOR_STATE.get(job.get("state"), FAILED)


def cmd_cancel(args, out: Out, env) -> int:
    accepted, job = connect(env).cancel(args.id)
    if not accepted:
        raise CliError(f"job {args.id} already {job.get('state')}", FAILED,
                       state=job.get("state"))
    verb = "cancelled" if job.get("state") == "cancelled" else "cancelling"
    out.result(f"{verb} job {job.get('id')}", job)
    return OK


def follow_to_end(api: Api, job_id, args, out: Out) -> int:
    status = StatusLine(out)
    try:
        job = Follower(api, job_id, on_update=status, timeout=args.timeout).run()
    except TimedOut as exc:
        status.clear()
        job = exc.job
        out.result(f"timed out after {args.timeout:g} s: job {job_id} still "
                   f"{job.get('state')}", job)
        return TIMEOUT
    finally:
        status.clear()
    out.result(outcome(job), job)
    return EXIT_FOR_STATE.get(job.get("state"), FAILED)


def cmd_wait(args, out: Out, env) -> int:
    return follow_to_end(connect(env), args.id, args, out)


def cmd_nodes(args, out: Out, env) -> int:
    nodes = connect(env).nodes()
    out.result(table(NODE_HEADERS, [node_row(n) for n in nodes]) if nodes else "no nodes",
               nodes)
    return OK


def cmd_kinds(args, out: Out, env) -> int:
    kinds = connect(env).kinds()
    rows = [[k.get("name"), k.get("queue"), k.get("title")] for k in kinds]
    out.result(table(["KIND", "QUEUE", "TITLE"], rows), kinds)
    return OK


def cmd_invite(args, out: Out, env) -> int:
    invitation = connect(env).invite(args.team, args.username, args.role)
    out.result(f"invited {args.username} to {args.team} as {invitation.get('role')}: they "
               "join when they accept (`portalctl accept "
               f"{invitation.get('id')}`)", invitation)
    return OK


def cmd_invitations(args, out: Out, env) -> int:
    found = connect(env).invitations()
    rows = [[i.get("id"), i.get("team"), i.get("role"), i.get("invited_by") or ""]
            for i in found]
    out.result(table(["ID", "TEAM", "ROLE", "FROM"], rows) if found else "no invitations",
               found)
    return OK


def cmd_accept(args, out: Out, env) -> int:
    membership = connect(env).answer(args.id, accept=True)
    out.result(f"joined {membership.get('team')} as {membership.get('role')}", membership)
    return OK


def cmd_decline(args, out: Out, env) -> int:
    connect(env).answer(args.id, accept=False)
    out.result(f"declined invitation {args.id}", {"id": args.id, "declined": True})
    return OK


def hours(seconds) -> str:
    return f"{(seconds or 0) / 3600:,.1f}"


def wait_text(seconds) -> str:
    return "-" if seconds is None else f"{seconds:,.1f}s"


def cmd_usage(args, out: Out, env) -> int:
    params = {"since": args.since, "group_by": args.by}
    if args.until:
        params["until"] = args.until
    report = connect(env).usage(**params)
    groups = report["group_by"]
    rows = [[*(r.get(g) for g in groups), r["jobs"], r["attempts"], r["lost"], r["preempted"],
             hours(r["core_seconds"]), hours(r["gpu_seconds"]), wait_text(r["wait_p50_seconds"]),
             wait_text(r["wait_p95_seconds"])] for r in report["rows"]]
    headers = [*(g.upper() for g in groups), "JOBS", "ATTEMPTS", "LOST", "PREEMPTED", "CORE-H",
               "GPU-H", "WAIT P50", "WAIT P95"]
    human = (table(headers, rows) if rows else
             f"no attempt ended between {report['since']} and {report['until']}")
    out.result(human, report)
    return OK


# -- arguments -----------------------------------------------------------------------------------


def param(text: str):
    try:
        return parse_param(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def label(text: str) -> tuple[str, str]:
    try:
        return parse_label(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def at_least(low: int):
    """An argparse type: a whole number, at least `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}: {text!r}")
        return value
    return parse


count = at_least(1)
whole = at_least(0)


def version() -> str:
    try:
        from importlib.metadata import version as installed

        return installed("cluster-portal")
    except Exception:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    # --json works before or after the command: the sub-parsers' default is "not given".
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON only (errors: a JSON object on "
                             "stderr)")
    main = argparse.ArgumentParser(
        prog="portalctl", parents=[common],
        description="The cluster portal from the command line. Log in once with "
                    "`portalctl login`; PORTAL_URL and PORTAL_TOKEN override the saved login.",
        epilog="exit codes: 0 ok/succeeded, 1 failed/no such job/already ended, 2 usage, "
               "connection, authentication or rejected job, 3 cancelled, 124 timed out")
    main.add_argument("--version", action="version", version=f"portalctl {version()}")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text, **kwargs):
        sub = commands.add_parser(name, parents=[common], help=help_text,
                                  description=help_text, **kwargs)
        sub.set_defaults(func=func)
        return sub

    sub = command("login", cmd_login, "check a token and save it with the portal's URL "
                  f"(in {config.config_path()}, mode 0600)")
    sub.add_argument("--url", help=f"the portal, e.g. {config.DEFAULT_URL} (default: "
                     "PORTAL_URL, the saved URL, or that)")
    sub.add_argument("--token", help="the API token (default: asked for, or read from stdin "
                     "when piped; a token given here shows in the process list)")

    sub = command("submit", cmd_submit, "submit a job; prints its id")
    sub.add_argument("kind", nargs="?", help="the job kind, e.g. diag.sleep (see "
                     "`portalctl kinds`); optional when the file names it")
    sub.add_argument("-p", "--param", action="append", type=param, metavar="KEY=VALUE",
                     help="a parameter, repeatable; the value is JSON when it parses "
                          "(3, true, [1,2], \"3\"), text otherwise")
    sub.add_argument("-f", "--file", help="a YAML or JSON file ('-': stdin): the job "
                     "({kind, params, name, ...}), or only its params when KIND is given")
    sub.add_argument("--name")
    sub.add_argument("--team", metavar="NAME", help="the team it runs for (default: your "
                     "first team)")
    sub.add_argument("--queue")
    sub.add_argument("--priority", type=int, metavar="N", help="-100 to 100: higher goes "
                     "first within its team (default 0)")
    sub.add_argument("--cpus", type=whole, metavar="N", help="CPU slots it holds against the "
                     "team's quota (default 1)")
    sub.add_argument("--gpus", type=whole, metavar="N", help="GPUs it holds (default 0)")
    sub.add_argument("--nodes", type=whole, metavar="N", help="a gang on N distinct nodes, "
                     "started all together, one rank per slot (default 1)")
    sub.add_argument("--slots-per-node", type=whole, metavar="N", dest="slots_per_node",
                     help="slots (ranks) it takes on each of its nodes (default 1)")
    sub.add_argument("--label", action="append", type=label, metavar="KEY=VALUE",
                     help="a node label it needs, e.g. gpu=a100 (repeatable): it runs only on "
                          "nodes that have them all")
    sub.add_argument("--max-attempts", type=int, dest="max_attempts")
    sub.add_argument("--after", action="append", metavar="ID", help="a job that must succeed "
                     "first (repeatable): this one stays pending until then")
    sub.add_argument("--wait", action="store_true",
                     help="then wait for it to end, like `portalctl wait`")
    sub.add_argument("--timeout", type=positive, metavar="S", help="with --wait: give up "
                     "after S seconds (exit 124)")

    sub = command("list", cmd_list, "your jobs, newest first", aliases=["ls"])
    sub.add_argument("--state", choices=STATES)
    sub.add_argument("--kind")
    sub.add_argument("-q", "--query", help="text in the job's name")
    sub.add_argument("--limit", type=count, default=50, help="at most this many (default 50)")
    sub.add_argument("--page-size", type=count, default=100, dest="page_size",
                     help="jobs per request (default 100, at most 500)")

    sub = command("status", cmd_status, "one job: its fields and attempts", aliases=["show"])
    sub.add_argument("id")

    sub = command("logs", cmd_logs, "a job's log lines")
    sub.add_argument("id")
    sub.add_argument("-f", "--follow", action="store_true", help="follow live until the job "
                     "ends; the exit code then is the job's, as for `wait`")
    sub.add_argument("--timeout", type=positive, metavar="S",
                     help="with -f: give up after S seconds (exit 124)")

    sub = command("cancel", cmd_cancel, "ask a job to stop")
    sub.add_argument("id")

    sub = command("wait", cmd_wait, "wait for a job to end: exit 0 succeeded, 1 failed, "
                  "3 cancelled, 124 timed out")
    sub.add_argument("id")
    sub.add_argument("--timeout", type=positive, metavar="S", help="give up after S seconds")

    sub = command("invite", cmd_invite, "invite a user to a team you are an admin of: they "
                  "join when they accept")
    sub.add_argument("team")
    sub.add_argument("username")
    sub.add_argument("--role", choices=["viewer", "member", "admin"], default="member",
                     help="their role once they accept (default member)")
    command("invitations", cmd_invitations, "the invitations waiting for your answer")
    sub = command("accept", cmd_accept, "accept an invitation: join its team (where your "
                  "jobs go by default stays as it is)")
    sub.add_argument("id")
    sub = command("decline", cmd_decline, "decline an invitation")
    sub.add_argument("id")
    sub = command("usage", cmd_usage, "what the cluster was used for (attempts that ended), "
                  "per team, user, kind, queue or day")
    sub.add_argument("--since", default="7d", help="first day: 7d, 12h, 2w back, or an ISO "
                     "date (default 7d)")
    sub.add_argument("--until", help="last day, the same forms (default today)")
    sub.add_argument("--by", default="team", help="team, user, kind, queue or day, or several "
                     "comma-separated: day,team (default team)")

    command("nodes", cmd_nodes, "the worker nodes, their state and utilization")
    command("kinds", cmd_kinds, "the job kinds you can submit")
    return main


def main(argv: list[str] | None = None, env=None) -> int:
    env = os.environ if env is None else env
    args = parser().parse_args(argv)
    out = Out(getattr(args, "json", False))
    try:
        return args.func(args, out, env)
    except CliError as exc:
        out.error(exc)
        return exc.code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`portalctl logs 1 | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK

