"""One rank of train.torch launched by hand under torchrun (bench.gang's baseline): the same
training code the portal's ranks run, with torchrun's RANK and WORLD_SIZE, meeting at its
MASTER_ADDR and MASTER_PORT. Prints one JSON line per rank: when it started, and (rank 0)
the kind's result.

    torchrun --standalone --nproc-per-node 2 bench/gang_rank.py '{"dataset": "digits"}'
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class LocalContext:
    """What train.torch asks of its context, without the portal: logs to stderr, artifacts to
    a temporary folder, no cancel."""

    def __init__(self, rank: int, world_size: int, folder: Path):
        self.rank, self.world_size, self.job_id, self.attempt = rank, world_size, 0, 1
        self.folder = folder

    def rendezvous(self, timeout_s: float) -> tuple[str, int]:
        """torchrun's own store: its agent serves it, every rank joins it as a client."""
        return os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])

    def log(self, text: str, level: str = "info") -> None:
        print(f"[rank {self.rank}] {text}", file=sys.stderr, flush=True)

    def metric(self, name, value, step=None) -> None:
        pass

    def progress(self, *args, **kwargs) -> None:
        pass

    def check(self) -> None:
        pass

    def artifact(self, path, name=None) -> str:
        name = name or Path(path).name
        shutil.copy(path, self.folder / name)
        return name


def main() -> None:
    started = time.time()
    from workers.kinds.torch_train import TorchParams, run

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    print(json.dumps({"rank": rank, "started": started}), flush=True)
    params = TorchParams.model_validate(json.loads(sys.argv[1]))
    with tempfile.TemporaryDirectory(prefix="gang-rank-") as tmp:
        result = run(LocalContext(rank, world, Path(tmp)), params)
    if rank == 0:
        print(json.dumps({"rank": 0, "result": result}), flush=True)


if __name__ == "__main__":
    main()
