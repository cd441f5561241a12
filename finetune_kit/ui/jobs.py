"""The board's run queue: runs as separate processes, one training at a time by default, the others waiting.

Each run launched from the board is a job with a folder `<workspace>/.board/jobs/<id>/` (its YAML, its log, the
progress lines `finetune_kit.ui.worker` writes, job.json with its state), so the board can be restarted and still
show what it ran. Processes start from argument lists (`[python, -m, finetune_kit.ui.worker, ..., train, recipe,
--config, path]`), never shell strings, in the workspace as working folder and in their own process group, so Stop
reaches the run and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune_kit.errors import UserError
from finetune_kit.files import write_atomic
from finetune_kit.ui.paths import existing_workspace

BOARD_DIR = ".board"
QUEUED, RUNNING, STOPPING, FINISHED, STOPPED, FAILED, LOST = (
    "queued", "running", "stopping", "finished", "stopped", "failed", "lost")
ACTIVE = (QUEUED, RUNNING, STOPPING)
# Stop: SIGINT (checkpoint at the end of the step, then exit), SIGTERM after this long, SIGKILL after as long again.
STOP_GRACE_S = 60.0


@dataclass
class Job:
    id: str
    recipe: str
    config: str  # the YAML, relative to the workspace
    output_dir: str  # relative to the workspace
    state: str = QUEUED
    resume: bool = False
    pid: int | None = None
    returncode: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    stop_sent: float | None = None
    command: list[str] = field(default_factory=list)


def _alive(pid: int | None) -> bool:
    """Whether process `pid` still runs (and is not a zombie waiting to be reaped)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path("/proc").is_dir() else ""
    except (OSError, IndexError):
        return False
    return state != "Z"


def job_id(output_dir: str) -> str:
    """A folder name for the job of a run folder (runs/my-run -> runs__my-run)."""
    return re.sub(r"[^\w.-]+", "_", output_dir.strip("/").replace("/", "__")) or "run"


def worker_command(job: Job, progress: Path) -> list[str]:
    """`finetune-kit train <recipe> --config <yaml>` run through the progress-writing worker."""
    command = [sys.executable, "-m", "finetune_kit.ui.worker", str(progress), "train", job.recipe, "--config",
               job.config]
    return command + (["--resume_from_checkpoint", "latest"] if job.resume else [])


class JobQueue:
    """Jobs of one workspace; `parallel` trainings at once (1 by default: two would share the same cores / GPU)."""

    def __init__(self, workspace: Path, parallel: int = 1, command_for=worker_command, poll_s: float = 0.5):
        self.workspace = Path(workspace).resolve()
        self.root = self.workspace / BOARD_DIR / "jobs"
        self.parallel, self.command_for = parallel, command_for
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.detached: set[str] = set()  # runs an earlier board started that are still going: watched by pid
        self.jobs: dict[str, Job] = {j.id: j for j in self._load()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(poll_s,), daemon=True, name="board-queue")
        self._thread.start()

    # -- what the board asks ------------------------------------------------------------------------------------

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def require_idle(self, output_dir: str) -> None:
        """Refuse a second job for a run folder that is queued or running."""
        old = self.jobs.get(job_id(output_dir))
        if old is not None and old.state in ACTIVE:
            raise UserError(f"{output_dir} is already {old.state}; stop it first or choose another output_dir.")

    def submit(self, recipe: str, config: str, output_dir: str, resume: bool = False) -> Job:
        existing_workspace(self.workspace)
        with self.lock:
            self.require_idle(output_dir)
            jid = job_id(output_dir)
            job = Job(jid, recipe, config, output_dir, resume=resume)
            self.folder(jid).mkdir(parents=True, exist_ok=True)
            self.jobs[jid] = job
            self._save(job)
        self.advance()
        return job

    def stop(self, jid: str) -> Job:
        with self.lock:
            job = self._job(jid)
            if job.state == QUEUED:
                job.state, job.ended = STOPPED, time.time()
            elif job.state == RUNNING and _alive(job.pid):
                os.killpg(job.pid, signal.SIGINT)  # the worker saves a checkpoint and exits (worker.py)
                job.state, job.stop_sent = STOPPING, time.time()
            else:
                raise UserError(f"{job.output_dir} is {job.state}: nothing to stop.")
            self._save(job)
            return job

    def resume(self, jid: str) -> Job:
        job = self._job(jid)
        return self.submit(job.recipe, job.config, job.output_dir, resume=True)

    def position(self, jid: str) -> int:
        """1 for the next job to start, 2 for the one after it; 0 when not queued."""
        queued = [j.id for j in sorted(self.jobs.values(), key=lambda j: j.created) if j.state == QUEUED]
        return queued.index(jid) + 1 if jid in queued else 0

    def close(self) -> None:
        """Stop the queue's thread (the runs themselves go on, or are stopped by the caller)."""
        self._stop.set()
        self._thread.join(timeout=5)

    # -- the queue ------------------------------------------------------------------------------------------------

    def advance(self) -> None:
        """Reap ended processes, escalate slow stops, start queued jobs while a slot is free."""
        with self.lock:
            for jid, proc in list(self.procs.items()):
                job = self.jobs[jid]
                code = proc.poll()
                if code is not None:
                    del self.procs[jid]
                    job.returncode, job.ended = code, time.time()
                    job.state = FINISHED if code == 0 else STOPPED if job.state == STOPPING else FAILED
                    self._save(job)
                elif job.state == STOPPING and time.time() - job.stop_sent > STOP_GRACE_S:
                    late = time.time() - job.stop_sent > 2 * STOP_GRACE_S
                    os.killpg(job.pid, signal.SIGKILL if late else signal.SIGTERM)
            for jid in list(self.detached):
                job = self.jobs[jid]
                if not _alive(job.pid):  # no exit code to read: the run folder says how it ended
                    self.detached.discard(jid)
                    finished = (self.workspace / job.output_dir / "run_info.json").is_file()
                    job.state = FINISHED if finished else STOPPED if job.state == STOPPING else FAILED
                    job.ended = time.time()
                    self._save(job)
            # A workspace deleted under the board: queued jobs wait (they would start in a folder that is gone).
            for job in sorted(self.jobs.values(), key=lambda j: j.created) if self.workspace.is_dir() else []:
                if len(self.procs) + len(self.detached) >= self.parallel:
                    break
                if job.state == QUEUED:
                    self._start(job)

    def _start(self, job: Job) -> None:
        folder = self.folder(job.id)
        job.command = self.command_for(job, folder / "progress.jsonl")
        log = open(folder / "train.log", "ab")
        log.write(f"\n$ {' '.join(job.command)}\n".encode())
        log.flush()
        # Its own process group (Stop signals the run and its data-loader workers, not the board); unbuffered, so the
        # log tail is live; the workspace as working folder, where the config's relative paths point.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(job.command, cwd=self.workspace, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        self.procs[job.id] = proc
        job.pid, job.state, job.started, job.ended, job.returncode = proc.pid, RUNNING, time.time(), None, None
        self._save(job)

    def _loop(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.advance()
            except Exception as err:  # noqa: BLE001 - the queue must outlive one bad job; the job shows the error
                print(f"board queue: {type(err).__name__}: {err}", file=sys.stderr)

    def _job(self, jid: str) -> Job:
        if jid not in self.jobs:
            raise UserError(f"no run {jid!r} on this board.")
        return self.jobs[jid]

    def _save(self, job: Job) -> None:
        if not self.workspace.is_dir():  # deleted under the board: the job's state lives on in memory only
            return
        write_atomic(self.folder(job.id) / "job.json", json.dumps(asdict(job), indent=1))

    def _load(self) -> list[Job]:
        jobs = []
        for path in sorted(self.root.glob("*/job.json")) if self.root.is_dir() else []:
            try:
                job = Job(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                continue
            if job.state in (RUNNING, STOPPING) and _alive(job.pid):  # an earlier board started it; it goes on
                self.detached.add(job.id)
            elif job.state in (RUNNING, STOPPING):  # ended while no board watched: its exit code is lost
                job.state = LOST
            jobs.append(job)  # queued jobs stay queued: this board starts them
        return jobs
