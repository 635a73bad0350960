"""Rank 0's side of tensor parallelism: the other ranks' processes, and every step sent to them.

The engine thread is rank 0: it schedules, runs its own part of the model and samples, as
without tensor parallelism. Ranks 1.. are processes spawned here (spawn works on every
platform), each with two pipes: steps out (a step's StepInputs, pickled once for all ranks) and
reports back (joined, loaded, failed). Steps travel over pipes rather than through a collective
so that a rank reads step k+1 while its device still runs step k, as rank 0 launches one step
ahead (see EngineCore).

A watchdog thread waits on the processes and their reports. When a rank dies or fails it
records why (``failure``), aborts NCCL collectives waiting for that rank and tells the engine,
which fails the requests with that reason and unloads the model.
"""

from __future__ import annotations

import pickle
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.engine.config import EngineConfig
from app.engine.distributed import parallel_state, worker
from app.engine.distributed.parallel_state import Shard
from app.engine.errors import ModelLoadError, TensorParallelError

if TYPE_CHECKING:
    from app.engine.model_runner import StepInputs

STARTUP_TIMEOUT_S = 300.0  # until every rank has joined (a fresh process imports torch first)
LOAD_TIMEOUT_S = 3600.0  # until every rank has loaded its part
EXPLAIN_S = 5.0  # how long a failed step waits for the rank whose death or report explains it
CLOSE_TIMEOUT_S = 30.0  # how long a rank may take to stop before it is killed
POLL_S = 50e-6  # between looks at a step's event (it ends a few ms after it is waited for)


class WorkerGroup:
    """Rank 0's handle on ranks 1..: their processes, the pipes to them, and their failures."""

    def __init__(self, processes: list, steps: list[Connection], reports: list[Connection], store: dist.Store):
        self.processes, self.steps, self.reports = processes, steps, reports  # index i: rank i + 1
        self._store = store  # the ranks' rendezvous, hosted here: it must outlive the group
        self.failure: str | None = None  # why the ranks cannot go on, once one failed
        self.on_failure: Callable[[], None] | None = None  # called from the watchdog thread
        self._failed = threading.Event()
        self._closing = False

    @classmethod
    def start(cls, config: EngineConfig, model_dir: Path, device: torch.device) -> "WorkerGroup":
        """Spawns ranks 1.. (each then loads its part) and joins the group with them as rank 0."""
        if dist.is_initialized():
            raise ModelLoadError("this process runs a tensor-parallel model already; unload it first")
        world = config.tensor_parallel
        store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                              timeout=parallel_state.TIMEOUT)
        context = mp.get_context("spawn")
        processes, steps, reports = [], [], []
        for rank in range(1, world):
            steps_in, steps_out = context.Pipe(duplex=False)
            reports_in, reports_out = context.Pipe(duplex=False)
            process = context.Process(
                target=worker.main, name=f"lmstation-tp-rank{rank}", daemon=True,
                args=(rank, config, model_dir, device, store.port, steps_in, reports_out),
            )
            process.start()
            steps_in.close()  # the rank's ends: closed here, so a rank's death reads as EOF
            reports_out.close()
            processes.append(process)
            steps.append(steps_out)
            reports.append(reports_in)
        group = cls(processes, steps, reports, store)
        try:
            group._collect("joining", STARTUP_TIMEOUT_S)
            parallel_state.init_group(Shard(0, world), device, store)
        except BaseException:
            group.close()
            raise
        return group

    def agree_cache_blocks(self, blocks: int) -> int:
        """Once every rank has loaded its part: the fewest KV cache blocks any rank's memory
        affords (rank 0's are ``blocks``), which every rank allocates. The watchdog starts here."""
        blocks = min(blocks, *self._collect("loaded", LOAD_TIMEOUT_S))
        for conn in self.steps:
            conn.send(blocks)
        threading.Thread(target=self._watch, name="lmstation-tp-watchdog", daemon=True).start()
        return blocks

    # ---- steps ------------------------------------------------------------------------------
    def send(self, inputs: StepInputs) -> None:
        """Sends a step to every rank (pickled once); each runs it as soon as it reads it."""
        data = pickle.dumps(inputs, protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self.steps:
            conn.send_bytes(data)

    def wait(self, event: torch.cuda.Event) -> None:
        """Waits for a step's event as synchronize() would, but raises TensorParallelError once a
        rank has failed, or when the step outlasts the collectives' timeout (a rank hangs)."""
        deadline = time.monotonic() + parallel_state.TIMEOUT.total_seconds()
        while not event.query():
            if self.failure is None and time.monotonic() > deadline:
                self.failure = f"a tensor-parallel step did not finish within {parallel_state.TIMEOUT}: a rank hangs"
                parallel_state.abort_group()
            if self.failure is not None:
                raise TensorParallelError(self.failure)
            time.sleep(POLL_S)
        if self.failure is not None:  # aborted collectives end too, with garbage
            raise TensorParallelError(self.failure)

    def error(self, exc: BaseException) -> TensorParallelError:
        """Why a step failed, as the error to report: the rank that died or failed (given a moment
        to show), else rank 0's own exception."""
        if isinstance(exc, TensorParallelError):
            return exc
        self._failed.wait(EXPLAIN_S)
        if self.failure is None:
            self.failure = f"tensor-parallel rank 0 failed: {type(exc).__name__}: {exc}"
        return TensorParallelError(self.failure)

    # ---- failures and shutdown ------------------------------------------------------------------
    def _watch(self) -> None:
        wait([p.sentinel for p in self.processes] + self.reports)
        if self._closing:
            return
        reasons = [self._describe(i, report) for i in range(len(self.processes)) if (report := self._read(i))]
        self.failure = reasons[0] if reasons else "a tensor-parallel rank stopped unexpectedly"
        parallel_state.abort_group()
        self._failed.set()
        if self.on_failure is not None:
            self.on_failure()

    def _collect(self, kind: str, timeout_s: float) -> list[Any]:
        """Every rank's next report, which must be ``kind``: their payloads, by rank. Raises
        ModelLoadError naming a rank that failed, died, or did not report within timeout_s."""
        deadline = time.monotonic() + timeout_s
        payloads: dict[int, Any] = {}
        while len(payloads) < len(self.processes):
            pending = [i for i in range(len(self.processes)) if i not in payloads]
            handles = [self.reports[i] for i in pending] + [self.processes[i].sentinel for i in pending]
            if not wait(handles, timeout=max(0.0, deadline - time.monotonic())):
                raise ModelLoadError(f"tensor-parallel rank {pending[0] + 1} did not report {kind!r} "
                                     f"within {timeout_s:.0f} s")
            for i in pending:
                report = self._read(i)
                if report is None:
                    continue
                if report[0] != kind:
                    raise ModelLoadError(self._describe(i, report))
                payloads[i] = report[1]
        return [payloads[i] for i in sorted(payloads)]

    def _read(self, i: int) -> tuple[str, Any] | None:
        """Rank i + 1's next report if there is one, ("died", None) if its process is ending
        (its sentinel is ready; whatever it reported before is in the pipe already)."""
        try:
            if self.reports[i].poll():
                return self.reports[i].recv()
        except (EOFError, OSError):
            return "died", None
        return ("died", None) if wait([self.processes[i].sentinel], 0) else None

    def _describe(self, i: int, report: tuple[str, Any]) -> str:
        if report[0] == "error":
            return f"tensor-parallel rank {i + 1} failed: {report[1]}"
        process = self.processes[i]
        process.join(1.0)
        code = process.exitcode
        if code is None:
            how = "its reports stopped"
        elif code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit status {code}"
        return f"tensor-parallel rank {i + 1} (process {process.pid}) died: {how}"

    def close(self) -> None:
        """Stops every rank and leaves the group. Healthy ranks leave their loop; a rank that has
        not stopped within CLOSE_TIMEOUT_S (one stuck in a collective with a failed rank) is killed."""
        if self._closing:
            return
        self._closing = True
        if self.failure is not None:  # collectives may wait for a failed rank, or ranks for ours: end them
            parallel_state.abort_group()
            parallel_state.destroy_group()
        for conn in self.steps:
            try:
                conn.send_bytes(worker.STOP)
            except OSError:
                pass
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(CLOSE_TIMEOUT_S)
                parallel_state.abort_group()  # a step still in flight here may wait for it
        parallel_state.abort_group()  # NCCL: the other ranks have gone, so nothing to wait for
        parallel_state.destroy_group()
        for conn in self.steps + self.reports:
            conn.close()
        self._store = None
