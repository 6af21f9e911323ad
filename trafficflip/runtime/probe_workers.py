"""Probe worker processes (``probe_workers: N`` with N > 1): probes across cores.

Each worker is a child of ``trafficflip run`` owning every N-th check. It schedules and runs
its probes itself and streams results back, and every result still enters the engine through
``engine.observe(key, result)``: health, decisions and metrics stay in this process. A worker
that dies is logged, counted and restarted after ``RESTART_DELAY``; its checks simply miss
probes meanwhile, which rise/fall absorb like any late probe. A worker that stays alive but
silent (hung: a deadlock, a swap storm, SIGSTOP) past its checks' ``silence_limit`` is
killed by PID and so restarted, and ``/readyz`` names it until the new one reports; its
checks meanwhile turn unknown, then down (``expire``). Workers run in their own
session (a terminal's Ctrl-C reaches only the parent) and leave when their stdin closes, so
they stop with the parent even when it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence

from trafficflip.decision.model import ProbeResult
from trafficflip.runtime.monitor import ProbeJob, silence_limit
from trafficflip.runtime.probe_scheduler import SchedulerStats
from trafficflip.runtime.probe_worker import decode

log = logging.getLogger("trafficflip.runtime.probe_workers")
RESTART_DELAY = 1.0
STOP_GRACE = 5.0
READ_SIZE = 256 * 1024
# How often silence is looked for (and checks without results expired).
WATCH_EVERY = 1.0
# Before its first result a worker may also be starting (Python, the shard's validation).
FIRST_RESULT_GRACE = 30.0


class ProbeWorkers:
    """``count`` worker processes probing ``jobs`` and feeding ``observe``."""

    def __init__(
        self,
        jobs: Sequence[ProbeJob],
        count: int,
        observe: Callable[[str, ProbeResult], None],
        stats: SchedulerStats,
        *,
        log_level: str = "INFO",
        log_format: str = "text",
        expire: Callable[[], None] = lambda: None,
    ) -> None:
        self.jobs = list(jobs)
        self.count = count
        self.observe = observe
        self.expire = expire
        self.stats = stats
        self.pids: dict[int, int] = {}
        # Per worker: when it last wrote (monotonic; its start before the first line), and
        # whether it wrote anything yet.
        self.heard: dict[int, float] = {}
        self._spoke: set[int] = set()
        # Workers killed for silence, with the reason ``/readyz`` gives until they report,
        # and the PID killed (its successor is watched, and killed, in turn).
        self.silent: dict[int, str] = {}
        self._killed: dict[int, int] = {}
        self._log = {"log_level": log_level, "log_format": log_format}
        self._tasks: list[asyncio.Task[None]] = []
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False

    def shard(self, worker: int) -> list[int]:
        """Indexes (into ``jobs``) of the checks worker ``worker`` probes."""
        return list(range(worker, len(self.jobs), self.count))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for worker in range(self.count):
            self._tasks.append(loop.create_task(self._keep(worker)))
        self._tasks.append(loop.create_task(self._watch()))

    def not_ready_reasons(self) -> list[str]:
        """Workers killed for silence and not yet reporting again, for ``/readyz``."""
        return [self.silent[worker] for worker in sorted(self.silent)]

    def limit(self, worker: int) -> float:
        """How long worker ``worker`` may write nothing: its most frequent check's
        ``silence_limit``, with ``FIRST_RESULT_GRACE`` more before its first result."""
        limits = [silence_limit(self.jobs[i].health) for i in self.shard(worker)]
        grace = 0.0 if worker in self._spoke else FIRST_RESULT_GRACE
        return min(limits, default=float("inf")) + grace

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WATCH_EVERY)
            try:
                self.expire()
            except Exception:  # the watch must outlive a failing observer
                log.exception("probe_expire_error")
            self._kill_silent(asyncio.get_running_loop().time())

    def _kill_silent(self, now: float) -> None:
        for worker, proc in list(self._procs.items()):
            quiet = now - self.heard.get(worker, now)
            done = proc.returncode is not None or self._killed.get(worker) == proc.pid
            if done or quiet <= self.limit(worker):
                continue
            self._killed[worker] = proc.pid
            self.silent[worker] = (
                f"probe worker {worker} (pid {proc.pid}) silent for {quiet:.0f}s: "
                "killed, restarting"
            )
            log.error(
                "probe_worker_silent worker=%d pid=%d silent=%.1fs checks=%d: killing it",
                worker,
                proc.pid,
                quiet,
                len(self.shard(worker)),
            )
            proc.kill()  # SIGKILL by PID: it ends a stopped process too

    async def reshard(self, jobs: Sequence[ProbeJob]) -> None:
        """Probe ``jobs`` from now on: restart the workers when the checks changed."""
        if [job.key for job in jobs] == [job.key for job in self.jobs]:
            return
        await self.stop()
        self.jobs, self._stopping, self._tasks, self._procs = list(jobs), False, [], {}
        self.silent, self.heard = {}, {}
        await self.start()

    async def stop(self) -> None:
        """Close every worker's stdin (they exit), kill any that linger, by PID."""
        self._stopping = True
        for proc in self._procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs.values():
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keep(self, worker: int) -> None:
        """Run worker ``worker`` until stopping, restarting it whenever it dies."""
        while not self._stopping:
            try:
                code: int | str | None = await self._run(worker)
            except Exception as exc:  # e.g. no process started (EMFILE): try again, said
                log.exception("probe_worker_start_failed worker=%d", worker)
                code = f"{type(exc).__name__}: {exc}"
            if self._stopping:
                return
            self.stats.worker_restarts += 1
            log.error(
                "probe_worker_died worker=%d code=%s checks=%d: restarting in %.0fs",
                worker,
                code,
                len(self.shard(worker)),
                RESTART_DELAY,
            )
            await asyncio.sleep(RESTART_DELAY)

    async def _run(self, worker: int) -> int | None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trafficflip.runtime.probe_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._procs[worker], self.pids[worker] = proc, proc.pid
        self.heard[worker] = asyncio.get_running_loop().time()
        self._spoke.discard(worker)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._shard_message(worker))
        checks = len(self.shard(worker))
        log.info("probe_worker_started worker=%d pid=%d checks=%d", worker, proc.pid, checks)
        with contextlib.suppress(ConnectionError):
            await self._read(worker, proc.stdout)
        return await proc.wait()

    def _shard_message(self, worker: int) -> bytes:
        jobs = [
            [i, self.jobs[i].check.model_dump(mode="json"), self.jobs[i].health.model_dump()]
            for i in self.shard(worker)
        ]
        return (json.dumps({**self._log, "jobs": jobs}) + "\n").encode()

    async def _read(self, worker: int, stdout: asyncio.StreamReader) -> None:
        keys = [job.key for job in self.jobs]
        observe = self.observe
        loop = asyncio.get_running_loop()
        rest = b""
        while chunk := await stdout.read(READ_SIZE):
            self.heard[worker] = loop.time()
            self._spoke.add(worker)
            self.silent.pop(worker, None)
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                try:
                    index, result = decode(line.decode())
                    observe(keys[index], result)
                except Exception:  # one bad line or result must not cut the worker's stream
                    log.exception("probe_result_error worker=%d line=%r", worker, line[:200])
