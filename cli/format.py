"""Turning API values into human output: tables, times, percentages, --param values."""

from __future__ import annotations

import json
from datetime import UTC, datetime

EMPTY = "-"


def parse_value(text: str):
    """A --param value: JSON when it parses (3 -> 3, true -> True, [1,2] -> [1, 2],
    "x" -> "x"), the text itself otherwise. NaN and Infinity stay text."""

    def refuse(name):
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def parse_param(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {item!r}")
    return key, parse_value(value)


def parse_label(item: str) -> tuple[str, str]:
    """A --label: KEY=VALUE, the value always text (gpu=100 is "100")."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {item!r}")
    return key, value.strip()


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: str | None) -> str:
    """An API time in the local time zone, to the second."""
    parsed = parse_time(value)
    return parsed.astimezone().strftime("%Y-%m-%d %H:%M:%S") if parsed else EMPTY


def clock(value: str | None) -> str:
    parsed = parse_time(value)
    return parsed.astimezone().strftime("%H:%M:%S") if parsed else ""


def ago(value: str | None, now: datetime | None = None) -> str:
    parsed = parse_time(value)
    if parsed is None:
        return "never"
    seconds = max(0, int(((now or datetime.now(UTC)) - parsed).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def percent(value) -> str:
    if value is None:
        return EMPTY
    try:
        return f"{float(value) * 100:.0f}%"
    except (TypeError, ValueError):
        return EMPTY


def number(value, digits: int = 0) -> str:
    if value is None:
        return EMPTY
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return EMPTY


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cell(value, width: int = 40) -> str:
    text = EMPTY if value in (None, "") else str(value)
    text = " ".join(text.split())  # one line per row
    return text if len(text) <= width else text[:width - 1] + "…"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def job_row(job: dict) -> list:
    return [job.get("id"), job.get("state"), job.get("team"), job.get("kind"), job.get("name"),
            percent(job.get("progress")), job.get("node"), when(job.get("created_at"))]


JOB_HEADERS = ["ID", "STATE", "TEAM", "KIND", "NAME", "PROGRESS", "NODE", "CREATED"]
NODE_HEADERS = ["NAME", "STATE", "CPU%", "MEM%", "GPU", "RUNNING", "LAST HEARTBEAT"]


def gpu_summary(utilization: dict) -> str:
    gpus = [g for g in utilization.get("gpus") or [] if isinstance(g, dict)]
    if not gpus:
        return EMPTY
    utils = [g["util"] for g in gpus if isinstance(g.get("util"), int | float)]
    if not utils:
        return f"{len(gpus)}x ?"
    return f"{len(gpus)}x {sum(utils) / len(utils):.0f}%"


def node_row(node: dict, now: datetime | None = None) -> list:
    util = node.get("utilization") or {}
    running = node.get("running")
    slots = node.get("concurrency")
    return [node.get("name"), node.get("state"), number(util.get("cpu")),
            number(util.get("mem")), gpu_summary(util),
            f"{running}/{slots}" if slots else running, ago(node.get("last_heartbeat"), now)]


def progress_text(job: dict) -> str:
    done, total, unit = job.get("done"), job.get("total"), job.get("unit") or ""
    text = percent(job.get("progress"))
    if isinstance(done, int | float) and isinstance(total, int | float) and total:
        text += f"  ({done:g}/{total:g}{' ' + unit if unit else ''})"
    return text


def resources(job: dict) -> str | None:
    """What the job holds and needs: "2 cpus, 1 gpu, gpu=a100"."""
    parts = []
    for field, unit in (("cpus", "cpu"), ("gpus", "gpu")):
        value = job.get(field)
        if isinstance(value, int):
            parts.append(f"{value} {unit}{'' if value == 1 else 's'}")
    labels = job.get("labels")
    if isinstance(labels, dict):
        parts += [f"{key}={value}" for key, value in sorted(labels.items())]
    return ", ".join(parts) or None


def job_block(job: dict) -> str:
    """`portalctl status`: the job's fields, then its attempts."""
    title = f"job {job.get('id')}  {job.get('kind')}"
    if job.get("name") and job.get("name") != job.get("kind"):
        title += f"  {job['name']!r}"
    state = job.get("state") or EMPTY
    if job.get("cancel_requested") and state not in ("cancelled",):
        state += " (cancel requested)"
    pending = job.get("state") == "pending"
    place = job.get("place_in_line")
    fields = [
        ("state", state),
        # Pending: what it waits for (its team's quota, a free slot) and where it stands.
        ("message", job.get("message")),
        ("place in line", f"{place} (among its team's waiting jobs)"
         if pending and isinstance(place, int) else None),
        ("attempt", f"{job.get('attempt')} of {job.get('max_attempts')}"),
        ("node", job.get("node")),
        ("progress", progress_text(job)),
        ("team", job.get("team")),
        ("priority", job.get("priority")),
        ("queue", job.get("queue")),
        ("resources", resources(job)),
        ("owner", job.get("owner")),
        ("created", when(job.get("created_at"))),
        ("started", when(job.get("started_at"))),
        ("finished", when(job.get("finished_at"))),
        ("time limit", f"{job['timeout_s']} s" if job.get("timeout_s") else None),
        ("params", json.dumps(job.get("params"), sort_keys=True)),
        ("result", None if job.get("result") is None else json.dumps(job["result"])),
        ("error", job.get("error")),
        ("parent", job.get("parent")),
        ("after", ", ".join(job.get("after") or [])),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [title]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in fields
              if value not in (None, "")]
    attempts = job.get("attempts") or []
    if attempts:
        lines.append("")
        rows = [[a.get("number"), a.get("state"), a.get("node"), when(a.get("started_at")),
                 when(a.get("finished_at")), a.get("error")] for a in attempts]
        lines += ["  " + line for line in table(
            ["ATTEMPT", "STATE", "NODE", "STARTED", "FINISHED", "ERROR"], rows).splitlines()]
    partitions = job.get("partitions") or []
    if partitions:
        states: dict[str, int] = {}
        for part in partitions:
            states[part.get("state")] = states.get(part.get("state"), 0) + 1
        lines.append("")
        lines.append(f"  partitions  {len(partitions)}: " + ", ".join(
            f"{count} {state}" for state, count in sorted(states.items())))
    return "\n".join(lines)


def log_text(line: dict) -> str:
    level = line.get("level") or "info"
    prefix = f"{clock(line.get('ts'))} [{line.get('attempt')}]"
    return f"{prefix} {level}: {line.get('text')}" if level != "info" else \
        f"{prefix} {line.get('text')}"


def outcome(job: dict) -> str:
    text = f"job {job.get('id')} {job.get('state')}"
    if job.get("state") == "failed" and job.get("error"):
        text += f": {job['error']}"
    return text
