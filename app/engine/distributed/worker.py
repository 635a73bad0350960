"""A tensor-parallel rank past 0: the loop its spawned process runs (group.py starts it).

It holds its part of the model and of the KV cache and runs every step rank 0 sends, in the
order sent; the all-reduces inside the forward pair with the other ranks'. It never samples:
rank 0 does, and broadcasts the tokens (ModelRunner.follow).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.distributed as dist

from app.engine.config import EngineConfig
from app.engine.cuda_graphs import max_graph_batch
from app.engine.distributed import parallel_state
from app.engine.distributed.parallel_state import Shard
from app.engine.kv_cache import KVCache
from app.engine.loader import model_loader
from app.engine.model_runner import ModelRunner

STOP = pickle.dumps(None)


def main(rank: int, config: EngineConfig, model_dir: Path, device: torch.device, port: int,
         steps: Connection, reports: Connection) -> None:
    """Joins the group, loads this rank's part, agrees the cache size with rank 0, then runs the
    steps it sends until STOP or until rank 0's process is gone. A failure goes back to rank 0
    as ("error", text) before the process exits with status 1."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the app; it stops the ranks
    shard = Shard(rank, config.tensor_parallel)
    device = parallel_state.rank_device(device, rank, config.gpus)
    status = 0
    try:
        if device.type == "cpu":  # the ranks share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // shard.world))
        store = dist.TCPStore("127.0.0.1", port, shard.world, is_master=False, timeout=parallel_state.TIMEOUT)
        reports.send(("joining", None))
        parallel_state.init_group(shard, device, store)
        cfg = model_loader.read_config(model_dir)
        model, affordable = model_loader.load_shard(config, model_dir, cfg, shard, device)
        reports.send(("loaded", affordable))
        cache = KVCache.allocate(cfg, steps.recv(), config.block_size, model_loader.cache_format(config, model.dtype),
                                 device, shard)
        runner = ModelRunner(model, cache, max_graph_batch(model, config),
                             model_loader.usable_context(cfg, config, cache))
        while (data := steps.recv_bytes()) != STOP:
            runner.follow(pickle.loads(data))
    except EOFError:  # rank 0's process is gone: nothing to report to
        pass
    except BaseException as exc:
        traceback.print_exc()
        try:
            reports.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        status = 1
    try:
        if device.type != "cuda":  # gloo leaves cleanly; an NCCL communicator that CUDA graphs
            parallel_state.destroy_group()  # captured can block its destroy: the exit frees it
    finally:
        # Ends at once: the interpreter's teardown of torch takes about a second, which every
        # unload would wait for, and nothing is left to clean up but the output streams.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
