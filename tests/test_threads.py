"""Thread placement: each eelight process takes its share of the cores it may use."""

import json
import os
import subprocess
import sys

import torch

from eelight.training.threads import Registry, ThreadShare, share


def test_share_arithmetic():
    assert share(16, 1) == 16 and share(16, 2) == 8 and share(16, 3) == 5
    assert share(2, 2) == 1 and share(2, 5) == 1  # never below one thread
    assert share(16, 2, loader_workers=4) == 4


def test_registry_counts_live_peers_on_shared_cores(tmp_path):
    me = Registry(tmp_path)
    me.join()
    assert me.processes() == 1
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / str(peer.pid)).write_text(json.dumps(sorted(me.cores)))
        assert me.processes() == 2
        far = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        (tmp_path / str(far.pid)).write_text(json.dumps([max(me.cores) + 1000]))  # cores we never use
        assert me.processes() == 2
        far.kill()
        far.wait()
    finally:
        peer.kill()
        peer.wait()
    assert me.processes() == 1  # a dead peer's file is cleared
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(os.getpid())]
    me.leave()
    assert not any(tmp_path.iterdir())


def test_thread_share_sets_torch_threads_and_gives_cores_back(tmp_path):
    before = torch.get_num_threads()
    try:
        cores = len(Registry(tmp_path).cores)
        threads = ThreadShare(registry=Registry(tmp_path), every_s=0)
        assert threads.start() == cores and torch.get_num_threads() == cores
        peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            (tmp_path / str(peer.pid)).write_text(json.dumps(sorted(threads.registry.cores)))
            assert threads.refresh() == max(1, cores // 2) == torch.get_num_threads()
        finally:
            peer.kill()
            peer.wait()
        assert threads.refresh() == cores
        threads.stop()
        fixed = ThreadShare(fixed=1, registry=Registry(tmp_path))
        assert fixed.start() == 1 and torch.get_num_threads() == 1
        fixed.stop()
    finally:
        torch.set_num_threads(before)
