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
    ),
    JobKind(
        name="diag.noop",
        title="No-op",
        description="Returns at once; measures the portal's own overhead.",
        params=NoopParams,
        run=noop,
    ),
]
