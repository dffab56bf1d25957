"""CPU and peak memory of named processes (each with its children) over a window, with psutil."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import psutil

from benchmarks.pipeline.results import ProcessUsage, Usage

MIB = 1024 * 1024
# libtorch_cuda, libc10_cuda and the nvidia-* wheels' libraries (cuBLAS, cuDNN, NCCL, nvrtc, ...).
CUDA_LIBRARY = re.compile(r"/nvidia/|/cuda[_-]|lib(torch|c10)_cuda|libcu|libnv|libnccl")


@dataclass
class _Watched:
    name: str
    process: psutil.Process
    children: bool
    cpu_first: float | None = None
    cpu_last: float = 0.0
    peak_rss: int = 0
    # Children's CPU as last seen, by pid: a child that exits keeps its share.
    children_cpu: dict[int, float] = field(default_factory=dict)


class UsageSampler:
    """Samples every `interval` seconds in a thread; a process that exits keeps its last sample.

    CPU time is counted from when a process is first seen, so one started inside the window (the
    producer) counts from its start; % is of one core over the whole window.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._watched: list[_Watched] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self._started = 0.0
        self._machine_first: float = 0.0

    def watch(self, name: str, pid: int | None, children: bool = False) -> None:
        """Watch `pid` (and its descendants, with `children`); None or a gone pid: nothing to watch."""
        if pid is None:
            return
        try:
            watched = _Watched(name, psutil.Process(pid), children)
        except psutil.NoSuchProcess:
            return
        with self._lock:
            self._watched.append(watched)
            _sample(watched)

    def start(self) -> UsageSampler:
        self._started = time.monotonic()
        self._machine_first = _machine_busy_seconds()
        self._thread.start()
        return self

    def stop(self) -> Usage:
        self._stop.set()
        self._thread.join()
        with self._lock:
            for watched in self._watched:
                _sample(watched)
        window = time.monotonic() - self._started
        machine = (_machine_busy_seconds() - self._machine_first) / window * 100
        processes = [_usage(w, window) for w in self._watched]
        ours = sum(p.cpu_percent for p in processes)
        return Usage(window, processes, machine, max(0.0, machine - ours))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                for watched in self._watched:
                    _sample(watched)


def _sample(watched: _Watched) -> None:
    try:
        with watched.process.oneshot():
            times = watched.process.cpu_times()
            own = times.user + times.system
            rss = watched.process.memory_info().rss
        for child in watched.process.children(recursive=True) if watched.children else []:
            try:
                child_times = child.cpu_times()
                watched.children_cpu[child.pid] = child_times.user + child_times.system
                rss += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return  # exited: its last sample stands
    total = own + sum(watched.children_cpu.values())
    if watched.cpu_first is None:
        watched.cpu_first = total
    watched.cpu_last = total
    watched.peak_rss = max(watched.peak_rss, rss)


def _usage(watched: _Watched, window: float) -> ProcessUsage:
    cpu = watched.cpu_last - (watched.cpu_first or 0.0)
    return ProcessUsage(
        watched.name,
        watched.process.pid,
        cpu,
        cpu / window * 100,
        watched.peak_rss / MIB,
        _cuda_libraries(watched.process) / MIB,
    )


def _cuda_libraries(process: psutil.Process) -> int:
    """Bytes of CUDA library pages resident in `process`: what PyPI's torch (a CUDA build) loads
    even without a GPU, and the CPU-only build in the Docker images does not."""
    try:
        maps = process.memory_maps(grouped=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0
    return sum(m.rss for m in maps if CUDA_LIBRARY.search(m.path))


def _machine_busy_seconds() -> float:
    # Linux: guest time is already inside user and nice; steal and iowait are not work done here.
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)
