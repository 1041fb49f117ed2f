"""What a node reports about itself: CPU (total and per core), memory, swap, disk, network,
load, processes and, where NVML is present, each GPU. Absent GPUs are simply absent."""

from __future__ import annotations

import logging
import os
import time

import psutil

log = logging.getLogger(__name__)


class GPUs:
    """NVML, if this node has NVIDIA GPUs and their driver; otherwise an empty list, always."""

    def __init__(self):
        self.nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                            for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no library, no driver or no device: a node without GPUs
            self.nvml = None
            self.handles = []

    def read(self) -> list[dict]:
        gpus = []
        for index, handle in enumerate(self.handles):
            try:
                util = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                temperature = self.nvml.nvmlDeviceGetTemperature(handle, 0)
            except Exception as exc:  # a GPU that fell off the bus is reported, not fatal
                gpus.append({"index": index, "error": str(exc)})
                continue
            gpus.append({"index": index, "util": float(util.gpu),
                         "mem_used": memory.used, "mem_total": memory.total,
                         "mem": 100.0 * memory.used / memory.total if memory.total else 0.0,
                         "temp": temperature})
        return gpus


class Sampler:
    """Turns psutil's counters into a snapshot with rates since the previous one."""

    def __init__(self, disk_path: str = "/"):
        self.disk_path = disk_path
        self.gpus = GPUs()
        self.last: tuple[float, object, object] | None = None
        psutil.cpu_percent(percpu=True)

    def sample(self) -> dict:
        now = time.monotonic()
        cores = psutil.cpu_percent(percpu=True)
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        disk = psutil.disk_usage(self.disk_path)
        disk_io = psutil.disk_io_counters()
        net_io = psutil.net_io_counters()
        rates = {"disk_read_bps": 0.0, "disk_write_bps": 0.0, "net_rx_bps": 0.0,
                 "net_tx_bps": 0.0}
        if self.last is not None:
            then, last_disk, last_net = self.last
            elapsed = max(now - then, 1e-6)
            if disk_io and last_disk:
                rates["disk_read_bps"] = (disk_io.read_bytes - last_disk.read_bytes) / elapsed
                rates["disk_write_bps"] = (disk_io.write_bytes - last_disk.write_bytes) / elapsed
            if net_io and last_net:
                rates["net_rx_bps"] = (net_io.bytes_recv - last_net.bytes_recv) / elapsed
                rates["net_tx_bps"] = (net_io.bytes_sent - last_net.bytes_sent) / elapsed
        self.last = (now, disk_io, net_io)
        gpus = self.gpus.read()
        return {
            "cpu": sum(cores) / len(cores) if cores else 0.0,
            "cpu_cores": cores,
            "mem": memory.percent, "mem_used": memory.used, "mem_total": memory.total,
            "swap": swap.percent,
            "disk": disk.percent, "disk_used": disk.used, "disk_total": disk.total,
            **{name: max(0.0, value) for name, value in rates.items()},
            "load1": os.getloadavg()[0],
            "procs": len(psutil.pids()),
            "gpus": gpus,
        }
