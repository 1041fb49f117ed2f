"""A worker node outlives Redis: killed (and started again empty) under a busy node, a few
times here, fifty in `make chaos-redis`."""

import subprocess
import sys

import pytest

from portal.cluster import ROOT

pytestmark = pytest.mark.integration


def test_a_busy_worker_takes_work_again_after_each_redis_kill_and_never_crashes(tmp_path):
    log = tmp_path / "worker.log"
    done = subprocess.run([sys.executable, "-m", "chaos.redis_loss", "--kills", "4", "--seed",
                           "7", "--log", str(log)], cwd=ROOT, capture_output=True, text=True,
                          timeout=280)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report + log.read_text(errors="replace")[-4000:]
    assert "Redis kills                                       4" in report
    for line in ("worker exits (restarted)", "'Unrecoverable error' in the worker log",
                 "never came back", "never started"):
        assert next(r for r in report.splitlines() if line in r).split()[-1] == "0", report
