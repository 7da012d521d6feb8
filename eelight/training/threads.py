"""Thread placement for several eelight processes on one machine.

torch starts one intra-op thread per core in every process. Two trainings on a 2-core
machine then run 4 busy threads on 2 cores, and OpenMP's spinning threads make that far worse
than 2x slower (BENCHMARKS.md: a 9x collapse of the combined throughput). So each process
takes a share of the cores it may use:

    threads = max(1, cores // processes - data.num_workers)

- `cores`: the CPUs this process may run on (its affinity mask, which SLURM's cgroup and
  `taskset` set), capped by `SLURM_CPUS_PER_TASK` when SLURM gives one;
- `processes`: the live eelight processes on this machine whose cores overlap ours (DDP
  ranks, sweep workers, a demo beside a sweep), found through a registry of pid files under
  the temp dir; DataLoader workers run with one thread each (torch's default) and their number
  is taken off this process's share.

The share is taken again while training runs (`ThreadShare` callback), so a process started
later makes the earlier ones give up cores, and one that ends gives them back.
`trainer.threads=N` fixes the number instead.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

REGISTRY = Path(tempfile.gettempdir()) / f"eelight-{os.getuid()}-procs"


def usable_cores() -> set[int]:
    cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and 0 < int(slurm) < len(cores):
        cores = set(sorted(cores)[: int(slurm)])
    return cores


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """This process's pid file (its cores), and the live peers sharing any of them."""

    def __init__(self, folder: Path = REGISTRY) -> None:
        self.folder = folder
        self.cores = usable_cores()
        self.path = folder / str(os.getpid())

    def join(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.cores)))
        tmp.replace(self.path)

    def leave(self) -> None:
        self.path.unlink(missing_ok=True)

    def processes(self) -> int:
        """Live registered processes whose cores overlap ours, this one included."""
        count = 1
        for entry in self.folder.glob("[0-9]*"):
            if entry == self.path or not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if not _alive(pid):
                entry.unlink(missing_ok=True)  # a process killed before it could leave
                continue
            try:
                cores = set(json.loads(entry.read_text()))
            except (OSError, ValueError):
                continue  # being written or removed
            count += bool(cores & self.cores)
        return count


def share(cores: int, processes: int, loader_workers: int = 0) -> int:
    return max(1, cores // max(1, processes) - loader_workers)


class ThreadShare:
    """Sets torch's intra-op threads to this process's share; `refresh` re-reads the peers at
    most every `every_s` seconds. `fixed` (trainer.threads) turns the placement off."""

    def __init__(self, fixed: int | None = None, loader_workers: int = 0, every_s: float = 5.0,
                 registry: Registry | None = None) -> None:
        self.fixed, self.loader_workers, self.every_s = fixed, loader_workers, every_s
        self.registry = registry or Registry()
        self._last = 0.0
        self.threads: int | None = None

    def start(self) -> int:
        self.registry.join()
        return self.refresh(force=True)

    def refresh(self, force: bool = False) -> int:
        import torch

        now = time.monotonic()
        if self.threads is not None and not force and now - self._last < self.every_s:
            return self.threads
        self._last = now
        want = self.fixed or share(len(self.registry.cores), self.registry.processes(), self.loader_workers)
        if want != self.threads:
            torch.set_num_threads(want)
            self.threads = want
        return want

    def stop(self) -> None:
        self.registry.leave()


def thread_callback(threads: ThreadShare):
    """A Lightning callback that re-takes the share before each training batch (cheap: a
    directory listing at most every `every_s` seconds)."""
    from lightning.pytorch.callbacks import Callback

    class _Refresh(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            threads.refresh()

    return _Refresh()
