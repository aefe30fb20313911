"""The guard between hpsearch and one trial's command: no process of the trial outlives it or hpsearch.

Run as ``python -S guard.py COMMAND...`` (a script, not the package: it starts in milliseconds). It
starts COMMAND in a process group of its own and waits for it. When COMMAND ends, whatever it left
running in its group is ended too (a script that forked workers); when hpsearch asks (SIGTERM:
pruned, diverged, timed out, Ctrl-C) or hpsearch dies (even by kill -9: the kernel's parent-death
signal, and the parent polled where there is none), the group gets SIGTERM, then SIGKILL after
GRACE seconds. The guard exits with COMMAND's status (128 + N for a signal N).
"""
import os
import signal
import subprocess
import sys
import time

GRACE = 5.0  # seconds between SIGTERM and SIGKILL: time for a script to write what it must
POLL = 0.2  # seconds between looks at the command and the parent


def end_group(pgid, child, grace):
    """SIGTERM to the group, SIGKILL to what is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        child.poll()  # reap the leader: a zombie still counts as a member of the group
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.poll()


def main(argv):
    parent = os.getppid()
    try:  # Linux: SIGTERM to this guard when hpsearch dies, however it dies
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the loop below polls the parent
    if os.getppid() != parent:
        return 143
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is hpsearch's: it stops the trial through SIGTERM
    stops = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stops.append(signum))
    signal.signal(signal.SIGHUP, lambda signum, frame: stops.append(signum))
    try:
        child = subprocess.Popen(argv, start_new_session=True)
    except FileNotFoundError:
        print(f"hpsearch: command not found: {argv[0]}", file=sys.stderr, flush=True)
        return 127
    except PermissionError:
        print(f"hpsearch: not executable: {argv[0]}", file=sys.stderr, flush=True)
        return 126
    while True:
        if stops or os.getppid() != parent:
            end_group(child.pid, child, GRACE)
            return 143
        try:
            code = child.wait(timeout=POLL)
            break
        except subprocess.TimeoutExpired:
            continue
    end_group(child.pid, child, 0.5)  # what the command left running dies with the trial
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
