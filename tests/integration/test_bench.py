"""Short runs of the two hot-path benchmarks (`make bench` runs the long ones): each starts its
own cluster, measures the portal beside its raw peer in the same run, prints its RESULT lines
and stops everything. Nothing here judges a figure (the machines are shared and noisy): the
benchmarks must run end to end, measure every part they name, and leave nothing behind."""

import os
import re
import signal
import subprocess
import sys

import pytest

from portal.cluster import ROOT

pytestmark = pytest.mark.integration


def run_bench(*argv: str, timeout: int) -> str:
    """Run a benchmark to its end. One that overruns is interrupted as Ctrl-C would (it then
    stops every process it started) before it is killed, so that nothing is left behind."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        report, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            report, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            report, _ = proc.communicate()
        pytest.fail(f"{' '.join(argv)} ran past {timeout} s:\n{report}")
    assert proc.returncode == 0, report
    assert "everything stopped" in report, report
    return report


def result(report: str, pattern: str) -> re.Match:
    line = next((line for line in report.splitlines() if line.startswith("RESULT")
                 and re.search(pattern, line)), None)
    assert line is not None, f"no RESULT line matching {pattern!r} in:\n{report}"
    return re.search(pattern, line)


@pytest.mark.timeout(300)
def test_dispatch_bench_measures_the_portal_its_raw_celery_and_http_peers_and_the_ingester():
    report = run_bench("bench.run", "--jobs", "120", "--latency-samples", "10", "--batch", "40",
                       timeout=280)
    tput = result(report, r"raw ([\d.]+) tasks/s, portal ([\d.]+) jobs/s, ratio ([\d.]+)x "
                          r"\(target >= 0.8x\) (PASS|MISS)")
    raw, portal, ratio = map(float, tput.groups()[:3])
    # (The rates are printed to a tenth: a tolerance for that rounding at low rates.)
    assert raw > 0 and portal > 0 and ratio == pytest.approx(portal / raw, rel=0.02, abs=0.01)
    cpu = result(report, r"cpu a job: portal ([\d.]+) ms, raw ([\d.]+) ms; at 0.8x the cores "
                         r"allow ([\d.]+) ms, of which .* take ([\d.]+) ms and the ingester, web "
                         r"and reconciler now ([\d.]+) ms")
    portal_ms, raw_ms, allowed, floor_ms, own = map(float, cpu.groups())
    assert portal_ms > own > 0 and raw_ms > 0 and floor_ms > 0
    # What 0.8x of raw's rate leaves a job on this machine's cores, from the same run's rate.
    assert allowed == pytest.approx(1000 * os.cpu_count() / (0.8 * raw), rel=0.02)
    floor = result(report, r"HTTP peer ([\d.]+) ms, ([+-][\d.]+) ms over raw .*; portal "
                           r"([+-][\d.]+) ms over the peer")
    assert float(floor.group(1)) > 0
    lat = result(report, r"latency p50: raw ([\d.]+) ms, portal ([\d.]+) ms, diff ([+-][\d.]+)")
    raw_p50, portal_p50, diff = map(float, lat.groups())
    # The three latencies are one run's: the splits add up.
    assert diff == pytest.approx(portal_p50 - raw_p50, abs=0.02)
    assert float(floor.group(2)) + float(floor.group(3)) == pytest.approx(diff, abs=0.05)
    # The serial writer's share of the run, from the ingester's own counters.
    busy = re.search(r"ingester: writing batches (\d+)% of the run \((\d+) batches", report)
    assert busy and int(busy.group(2)) >= 1, report
    for component in ("web", "workers", "ingester", "postgres", "redis"):
        assert re.search(rf"^\s+{component}\s+[\d.]+ s", report, re.M), report


@pytest.mark.timeout(300)
def test_live_bench_measures_the_portal_beside_the_raw_channels_peer():
    report = run_bench("bench.live", "--quick", "--clients", "40", "--nodes", "10",
                       "--seconds", "3", "--warmup", "1", timeout=280)
    portal = result(report, r"live latency p99: ([\d.]+) ms with 40 clients and 10 nodes")
    peer = result(report, r"portal p99 ([\d.]+) ms, peer p99 ([\d.]+) ms with 40 clients, "
                          r"ratio ([\d.]+)")
    p99, peer_p99, ratio = map(float, peer.groups())
    assert p99 == float(portal.group(1)) > 0 and peer_p99 > 0
    assert ratio == pytest.approx(p99 / peer_p99, abs=0.01)
    result(report, r"live 1 client p99: [\d.]+ ms")
    # Every event reached every client: nothing is lost on the way, whatever the timing.
    delivered = result(report, r"deliveries: [\d.]+ % .* \((\d+) of (\d+)\)")
    assert delivered.group(1) == delivered.group(2) != "0", report
    result(report, r"web processes: \d+, [\d.]+ % of one core and [\d.]+ MB PSS")


@pytest.mark.timeout(200)
def test_submit_bench_times_every_step_of_a_submit_once_a_request():
    report = run_bench("bench.submit", "--requests", "20", "--warm", "5", timeout=180)
    line = result(report, r"submit p50: ([\d.]+) ms in-process; steps (.*); durable part "
                          r"([\d.]+) ms")
    whole = float(line.group(1))
    steps = {name: float(ms) for name, ms in
             (item.rsplit(" ", 1) for item in line.group(2).split(", "))}
    assert set(steps) == {"token", "lockout", "throttles", "parameters", "team", "rows",
                          "admission", "audit", "commit", "send"}
    assert all(ms > 0 for ms in steps.values()), steps  # each step ran, and was timed
    assert float(line.group(3)) == pytest.approx(
        steps["rows"] + steps["commit"] + steps["send"], abs=0.02)
    assert steps["token"] < whole and steps["lockout"] <= steps["token"]
    # Every step ran once a request: none was missed, none counted twice.
    for name in steps:
        assert re.search(rf"^\s+{name}\b.*\s1\.0 a request", report, re.M), report
