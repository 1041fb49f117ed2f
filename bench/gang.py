"""Gangs: the same train.torch job on 1, 2 and 4 ranks through the portal, against torchrun
launching the same training code by hand with the same world size, in the same run.

    python -m bench.gang             (digits, 3 epochs, batch 64; about 3-5 minutes)
    python -m bench.gang --quick     (1 and 2 ranks only, 2 epochs)

It starts what it needs (a throwaway PostgreSQL and Redis, the web server, the ingester, the
reconciler and four one-slot worker nodes b1..b4 on the `train` queue, labelled bench=yes) and
stops all of it at the end, also on Ctrl-C or an error. A first 4-rank job warms every node up
(its pool process imports torch once); then, per world size:

- portal: the job POSTed over REST with `nodes` = world size; submit -> all ranks started is
  from before the POST to the last rank's started_at (the worker's clock, as recorded); the
  epoch time and the rendezvous cost (rank 0 reporting its address until the process group is
  joined) are the kind's own figures (its result);
- torchrun: `torchrun --standalone --nproc-per-node N bench/gang_rank.py` with the same
  parameters; launch -> all ranks started is from before the launch to the last rank's start
  (each rank prints it), and the same epoch and rendezvous figures.

On this machine's few cores four ranks share two CPUs: the figure is the portal's overhead, not
a speed-up. The run exits 0 when it completes (2 when a job failed, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.run import begin, guarded, log, start_portal, stop_all, wait_until
from portal.cluster import BIN, ROOT, free_port

NODES = ("b1", "b2", "b3", "b4")
LABELS = {"bench": "yes"}


class JobFailed(RuntimeError):
    pass


class Bench:
    def __init__(self, args):
        self.args = args
        self.pg = self.redis_server = self.cluster = None
        self.token = ""
        self.base_url = ""
        self.db = None
        self.artifacts: Path | None = None
        self.params = {"dataset": "digits", "epochs": args.epochs,
                       "batch_size": args.batch_size, "seed": 1}

    def setup(self) -> None:
        self.artifacts = Path(tempfile.mkdtemp(prefix="portal-bench-gang-"))
        start_portal(self, lambda pg: {"ARTIFACTS_DIR": str(self.artifacts),
                                       "HEARTBEAT_S": "0.5"})
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.cluster.start_web(port)
        self.cluster.start_ingester()
        self.cluster.start_reconciler()
        for name in NODES:
            self.cluster.start_worker(name, concurrency=1, queues="train",
                                      labels=f"bench=yes,host={name}")
        import psycopg

        self.db = psycopg.connect(self.pg.url, autocommit=True)
        wait_until(lambda: self.sql("SELECT count(*) FROM jobs_node WHERE state = 'online' "
                                    "AND queues::text LIKE '%%\"train\"%%'")[0][0]
                   == len(NODES), 90, "four nodes on the train queue", interval=0.2)
        log(f"web on :{port}, ingester, reconciler and nodes {', '.join(NODES)} up")

    def teardown(self) -> None:
        stop_all([
            ("cluster", lambda: self.cluster and self.cluster.stop()),
            ("database connection", lambda: self.db and self.db.close()),
            ("Redis", lambda: self.redis_server and self.redis_server.cleanup()),
            ("PostgreSQL", lambda: self.pg and self.pg.cleanup()),
            ("artifacts", lambda: self.artifacts and shutil.rmtree(self.artifacts,
                                                                   ignore_errors=True)),
        ])

    def sql(self, query: str, *args):
        return self.db.execute(query, args).fetchall()

    def portal(self, world: int) -> dict:
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        body = {"kind": "train.torch", "name": f"bench {world} ranks", "labels": LABELS,
                "nodes": world, "params": self.params, "max_attempts": 1}
        t0 = time.time()
        response = session.post(f"{self.base_url}/api/v1/jobs/", json=body, timeout=30)
        response.raise_for_status()
        job_id = int(response.json()["id"])

        def ended():
            job = session.get(f"{self.base_url}/api/v1/jobs/{job_id}/", timeout=30).json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        job = wait_until(ended, 600, f"job {job_id}", interval=0.2)
        if job["state"] != "succeeded":
            raise JobFailed(f"job {job_id} ({world} ranks) {job['state']}: {job['error']}")
        starts = [datetime.fromisoformat(r["started_at"]).timestamp() for r in job["ranks"]
                  if r["attempt"] == job["attempt"]] or [
            datetime.fromisoformat(job["started_at"]).timestamp()]
        return {"all_started_s": max(starts) - t0, **figures(job["result"]),
                "nodes": sorted({r["node"] for r in job["ranks"]}) or [job["node"]]}

    def torchrun(self, world: int) -> dict:
        argv = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={world}",
                str(ROOT / "bench" / "gang_rank.py"), json.dumps(self.params)]
        env = {**self.cluster.worker_env(), "ARTIFACTS_DIR": str(self.artifacts),
               "OMP_NUM_THREADS": "1"}
        t0 = time.time()
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                             cwd=ROOT)
        if out.returncode:
            raise JobFailed(f"torchrun with {world} ranks exited {out.returncode}: "
                            f"{out.stderr[-2000:]}")
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        starts = [line["started"] for line in lines if "started" in line]
        result = next(line["result"] for line in lines if "result" in line)
        return {"all_started_s": max(starts) - t0, **figures(result)}


def figures(result: dict) -> dict:
    return {"epoch_s": result["epoch_s"], "rendezvous_s": result["rendezvous_s"],
            "accuracy": result["accuracy"], "samples_per_s": result["samples_per_s"]}


def report(rows: list[tuple[int, dict, dict]]) -> None:
    print("\nranks | path     | submit->all started | epoch   | rendezvous | samples/s | "
          "accuracy", flush=True)
    for world, portal, raw in rows:
        for label, row in (("portal", portal), ("torchrun", raw)):
            print(f"{world:5d} | {label:8s} | {row['all_started_s']:17.2f} s | "
                  f"{row['epoch_s']:5.2f} s | {row['rendezvous_s']:8.2f} s | "
                  f"{row['samples_per_s']:9.0f} | {row['accuracy']:.4f}", flush=True)
        print(f"RESULT ranks={world} start_overhead_s="
              f"{portal['all_started_s'] - raw['all_started_s']:+.2f} "
              f"epoch_ratio={portal['epoch_s'] / raw['epoch_s']:.2f} "
              f"rendezvous_overhead_s={portal['rendezvous_s'] - raw['rendezvous_s']:+.2f} "
              f"nodes={'+'.join(portal['nodes'])}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 ranks, 2 epochs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, dest="batch_size")
    parser.add_argument("--verbose", action="store_true", help="show the cluster's output")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 2
    args.worlds = (1, 2) if args.quick else (1, 2, 4)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = begin(f"cluster-portal gang benchmark: train.torch on {args.worlds} ranks, "
                    f"{args.epochs} epochs of digits, batch {args.batch_size}")
    bench = Bench(args)

    def measure() -> bool:
        bench.setup()
        log(f"warm-up: one {max(args.worlds)}-rank job (every node imports torch once)")
        bench.portal(max(args.worlds))
        rows = []
        for world in args.worlds:
            log(f"{world} rank(s): through the portal, then by torchrun")
            rows.append((world, bench.portal(world), bench.torchrun(world)))
        report(rows)
        return True

    return guarded(bench, started, measure, strict=False, said=(JobFailed, TimeoutError))


if __name__ == "__main__":
    sys.exit(main())
