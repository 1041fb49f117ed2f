"""Diagnostic kinds: a sleeper that reports progress and a metric each second, and a no-op for
benchmarks."""

import time

from pydantic import Field

from workers.kinds import JobKind, Params


class SleepParams(Params):
    seconds: float = Field(5, ge=0, le=86_400, description="How long to sleep, in seconds.")
    fail: bool = Field(False, description="Fail at the end instead of succeeding.")
    ignore_cancel: bool = Field(False, description="Keep sleeping through a cancel, like code "
                                "that never checks: shows the node agent's forced stop.")
    note: str = Field("", max_length=1000, description="A line to write to the job's log first.")


def sleep(ctx, params: SleepParams):
    whole = int(params.seconds)
    if params.note:
        ctx.log(params.note)
    ctx.log(f"sleeping {params.seconds:g} s")
    ctx.progress(0, params.seconds, unit="s")
    nap = time.sleep if params.ignore_cancel else ctx.sleep
    for second in range(1, whole + 1):
        nap(1)
        ctx.progress(second, params.seconds, unit="s")
        ctx.metric("remaining_s", params.seconds - second, step=second)
    nap(params.seconds - whole)
    ctx.progress(params.seconds, params.seconds, unit="s")
    if params.fail:
        raise RuntimeError("failed as asked (fail=true)")
    ctx.log("done")
    return {"slept": params.seconds}


class FanOutParams(Params):
    parts: int = Field(4, ge=1, le=1000, description="How many partitions.")
    seconds: float = Field(1, ge=0, le=3600, description="How long each partition sleeps.")
    fail_first_attempt: list[int] = Field(
        [], max_length=1000, description="Partitions that fail on their first attempt (each is "
        "retried alone, and the job still succeeds).")
    part_queue: str | None = Field(None, max_length=50, description="Queue of the partitions "
                                   "(by default diag.part's).")


def fan_out(ctx, params: FanOutParams):
    failing = set(params.fail_first_attempt)
    results = ctx.fan_out("diag.part", [
        {"index": i, "seconds": params.seconds, "fail_first_attempt": i in failing}
        for i in range(params.parts)], queue=params.part_queue)
    ctx.log(f"{len(results)} partitions done")
    return {"parts": len(results), "slept": sum(r["slept"] for r in results),
            "attempts": [r["attempt"] for r in results]}


class PartParams(Params):
    index: int = Field(ge=0)
    seconds: float = Field(ge=0, le=3600)
    fail_first_attempt: bool = False


def part(ctx, params: PartParams):
    if params.fail_first_attempt and ctx.attempt == 1:
        raise RuntimeError(f"partition {params.index} fails on its first attempt, as asked")
    sleep(ctx, SleepParams(seconds=params.seconds))
    return {"index": params.index, "slept": params.seconds, "attempt": ctx.attempt}


class NoopParams(Params):
    pass


def noop(ctx, params: NoopParams):
    return None


KINDS = [
    JobKind(
        name="diag.sleep",
        title="Sleep",
        description="Sleeps for a while, reporting progress each second; can be told to fail.",
        params=SleepParams,
        run=sleep,
        preemptible=True,
    ),
    JobKind(
        name="diag.fanout",
        title="Fan out",
        description="Splits into partitions that sleep on any worker; some can fail once.",
        params=FanOutParams,
        run=fan_out,
    ),
    JobKind(
        name="diag.part",
        title="Fan-out partition",
        description="One partition of diag.fanout.",
        params=PartParams,
        run=part,
        internal=True,
    ),
    JobKind(
        name="diag.noop",
        title="No-op",
        description="Returns at once; measures the portal's own overhead.",
        params=NoopParams,
        run=noop,
        preemptible=True,
    ),
]
