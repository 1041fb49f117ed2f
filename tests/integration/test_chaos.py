"""A short fault campaign (one fault of each kind) on the real processes; `make chaos` runs
a hundred. Network cuts need root: where there is none, the campaign says so and fails. Its
one gang job (the second submitted; `make chaos` has more) runs its ranks on two nodes, each
in its own namespace, and succeeds, every one of its attempts meeting at rank 0's namespace
address (10.213.B.x), never a loopback one."""

import re
import subprocess
import sys

import pytest

from portal.cluster import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_one_fault_of_each_kind_loses_no_job_and_breaks_no_invariant(tmp_path):
    log = tmp_path / "chaos.log"
    done = subprocess.run([sys.executable, "-m", "chaos.campaign", "--faults", "7", "--seed",
                           "5", "--every", "1.5", "--gangs", "0", "--drain", "90",
                           "--log", str(log)],
                          cwd=ROOT, capture_output=True, text=True, timeout=560)
    report = done.stdout + done.stderr
    assert "OK: every invariant held" in report and done.returncode == 0, report
    for kind in ("node_kill", "node_stop", "net_cut", "redis_kill", "ingester_kill",
                 "reconciler_kill", "web_kill"):
        row = next(line for line in report.splitlines() if line.strip().startswith(kind))
        assert row.split()[1] == "1" and row.split()[-1] == "0", row  # ran once, recovered
    rows = dict(m.groups() for line in report.splitlines()
                if (m := re.match(r"\s+(.*?\S)\s{2,}(.*\S)\s*$", line)))
    assert int(rows["gang jobs (train.torch, 2 nodes)"]) >= 1, report
    succeeded = rows["succeeded / failed / cancelled"].split(" / ")[0]
    assert int(succeeded) >= 1, report
    met = re.fullmatch(r"(\d+) of (\d+) / (\d+) of (\d+) at 10\.213\.\d+\.x",
                       rows["rendezvous on the nodes' network (reported / joined)"])
    assert met, report
    reported, of_reported, joined, of_joined = map(int, met.groups())
    assert reported == of_reported >= 1 and joined == of_joined >= 1, report
