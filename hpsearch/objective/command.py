"""The user's command as an Objective: everything after ``--``, run once per trial, read line by line.

The command's parts may hold placeholders, ``{lr}``, ``{weight_decay}``, ... (every registered
parameter), ``{epochs}``, ``{seed}``, ``{split}``, ``{trial}``, ``{device}``; the same values are in its
environment (``HPSEARCH_LR``, ..., ``HPSEARCH_PARAMS`` as JSON). It reports an epoch by printing a line
that is a JSON object with ``epoch`` and metrics (``hpsearch.report_epoch`` prints one); its other output,
and all of stderr, goes to the trial's log. A non-zero exit fails the trial with the last line of
stderr as the reason. A pruned, diverged or timed-out trial is ended through the guard (guard.py),
which also ends whatever the command left running, and ends everything when hpsearch dies.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Sequence

from hpsearch.errors import BadInput
from hpsearch.objective.base import EpochCallback, Failure
from hpsearch.objective.hp import HP, SETTINGS, MetricError, TrialEnded, check_metrics
from hpsearch.objective.own import LOG_LIMIT, OneAtATime, TrialRun, log_note
from hpsearch.space import names as param_names
from hpsearch.spec import Config

if TYPE_CHECKING:
    from hpsearch.train import MemberResult

GUARD = Path(__file__).with_name("guard.py")
READ_LIMIT = 2**20  # bytes read as one line at most: a longer line is output, never a metric
STDERR_TAIL = 20  # lines of stderr kept for a failed trial's reason
STOP_WAIT = 10.0  # seconds to wait for the guard after asking it to stop (its grace is 5 s)


def placeholders() -> tuple[str, ...]:
    return (*param_names(), *SETTINGS)


def check_command(command: Sequence[str]) -> None:
    """Placeholders that exist and an executable that can be found, before any trial is asked."""
    known = placeholders()
    for part in command:
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(part) if field is not None]
        except ValueError as error:
            raise BadInput(f"the command after --: '{part}': {error} (write {{{{ and }}}} for a literal brace)") from None
        for field in fields:
            if field not in known:
                raise BadInput(f"the command after --: '{{{field}}}' is not a placeholder; use "
                               f"{', '.join('{' + name + '}' for name in known)}")
    program = command[0]
    if "{" in program:
        return
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise BadInput(f"the command after --: {program} is not an executable file")
    elif shutil.which(program) is None:
        raise BadInput(f"the command after --: '{program}' not found on the PATH")


def _reader(stream: IO[bytes], name: str, lines: queue.Queue) -> None:
    """Each line of ``stream`` onto ``lines`` as (name, text, whole); (name, None, False) at its end."""
    continued = False  # the chunk before had no line end: this one is the rest of a long line
    for chunk in iter(lambda: stream.readline(READ_LIMIT), b""):
        whole = not continued and chunk.endswith(b"\n")
        lines.put((name, chunk.decode("utf-8", errors="replace"), whole))
        continued = not chunk.endswith(b"\n")
    lines.put((name, None, False))


def _metric_line(text: str) -> tuple[int, dict[str, object]] | None:
    """(epoch, metrics) from a line that is a JSON object with "epoch"; None for any other line."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(value, dict) or "epoch" not in value:
        return None
    epoch = value.pop("epoch")
    return epoch, value


class CommandObjective(OneAtATime):
    """A command run once per trial (``hpsearch grid -- python train.py --lr {lr} ...``)."""

    def __init__(self, command: Sequence[str], metric: str = "val_accuracy", device: str = "auto",
                 timeout: float | None = None, logs: Path | None = None, split: str = "val") -> None:
        self.command, self.metric, self.device, self.timeout, self.logs, self.split = (
            tuple(command), metric, device, timeout, logs, split)

    def prepare(self) -> None:
        check_command(self.command)

    def _placement(self) -> tuple[str, dict[str, str]]:
        """The device the command is told, and the environment that places it (a worker's own GPU)."""
        if self.device.startswith("cuda:"):  # a --jobs worker's GPU: the only one the command sees
            return "cuda", {"CUDA_VISIBLE_DEVICES": self.device.split(":", 1)[1]}
        if self.device == "auto":
            from hpsearch.train import resolve_device

            return resolve_device("auto").type, {}
        return self.device, {}

    def run_one(self, index: int, config: Config, epochs: int, on_epoch: EpochCallback,
                trial: int, path: Path | None) -> list[MemberResult] | Failure:
        device, placement = self._placement()
        hp = HP(config.params(), epochs, config.seed, device, self.split, trial)
        argv = [part.format_map(hp.texts()) for part in self.command]
        env = {**os.environ, **hp.environment(), **placement, "PYTHONUNBUFFERED": "1"}
        where = log_note(path)
        run = TrialRun(index, config, on_epoch, self.metric, self.split)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "w", encoding="utf-8", errors="replace") if path is not None else None
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        written = 0
        proc = subprocess.Popen([sys.executable, "-S", str(GUARD), *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        lines: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=_reader, args=(stream, name, lines), daemon=True)
                   for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for reader in readers:
            reader.start()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        failure: Failure | None = None
        open_streams = 2
        try:
            while open_streams:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                try:
                    name, text, whole = lines.get(timeout=wait)
                except queue.Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        failure = Failure(f"ran past --timeout {self.timeout:g} s{where}", timed_out=True)
                        break
                    continue
                if text is None:
                    open_streams -= 1
                    continue
                if log is not None and written < LOG_LIMIT:
                    log.write(text)
                    written += len(text)
                    if written >= LOG_LIMIT:
                        log.write(f"\n[hpsearch: the log reached {LOG_LIMIT // 2**20} MiB; the rest is not kept]\n")
                if name == "stderr":
                    if text.strip():
                        tail.append(text.rstrip("\n"))
                    continue
                parsed = _metric_line(text) if whole else None
                if parsed is None:
                    continue
                try:
                    run.report(parsed[0], check_metrics(*parsed))  # type: ignore[arg-type]
                except TrialEnded:
                    break
                except MetricError as error:
                    failure = Failure(f"the command's metric line: {error}{where}")
                    break
        finally:
            stopped = proc.poll() is None
            if stopped:  # pruned, diverged, timed out, a bad line, or Ctrl-C here: end the trial's processes
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            for reader in readers:
                reader.join(timeout=1.0)
            if log is not None:
                log.close()
        if failure is not None:
            return failure
        if code != 0 and not run.ended:
            last = tail[-1] if tail else "no output on stderr"
            return Failure(f"the command exited with status {code}: {last}{where}")
        return run.results(f"the command exited without a metric line (print one JSON line per epoch, e.g. "
                           f'{{"epoch": 1, "{self.metric}": ...}}, or call hpsearch.report_epoch){where}')

