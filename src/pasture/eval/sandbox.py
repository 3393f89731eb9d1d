"""Run untrusted generated code (HumanEval completions) away from the evaluating process.

Each program runs in a fresh `python -I` subprocess, in its own temporary directory and session,
with:
- resource limits set before exec: CPU seconds, address space (memory), size of written files,
  core dumps off;
- a wall-clock timeout after which the whole process group is killed;
- no network: a new network namespace with no interfaces (`unshare -rn`) where the kernel
  allows it, and in any case an audit hook installed before the program runs that refuses every
  socket operation, process creation, and writes or deletions outside the temporary directory.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

# Runs in the child before the program. An audit hook cannot be removed once added.
_GUARD = r'''
import os, sys
_root = os.path.realpath(os.getcwd())
_refused = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "os.kill", "os.killpg", "ctypes.dlopen", "os.remove", "os.rmdir", "os.rename", "os.chmod",
            "os.chown", "shutil.rmtree", "os.truncate", "os.symlink", "os.link")
_write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _inside(path):
    if isinstance(path, int):
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    full = os.path.realpath(os.path.join(_root, path))
    return full == _root or full.startswith(_root + os.sep)

def _guard(event, args):
    if event.startswith("socket."):
        raise PermissionError("sandbox: network access is not allowed")
    if event.startswith(_refused):
        if event.startswith(("os.remove", "os.rmdir", "os.rename", "os.truncate", "os.symlink", "os.link")) \
                and all(_inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
            return
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (flags & _write_flags)
        if writing and not _inside(path):
            raise PermissionError("sandbox: writing outside the sandbox directory is not allowed")

sys.addaudithook(_guard)
with open(sys.argv[1], encoding="utf-8") as _f:
    _source = _f.read()
exec(compile(_source, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass
class SandboxLimits:
    timeout: float = 10.0  # wall-clock seconds
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # address space
    file_bytes: int = 1 << 20  # largest file the program may write


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    output: str  # the last lines of stderr (or stdout), for inspection

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@cache
def network_namespace_available() -> bool:
    """Whether `unshare -rn` (unprivileged user + network namespace) works on this kernel."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _limit(limits: SandboxLimits):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(program: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run one Python program in the sandbox; it passes when it exits with status 0."""
    limits = limits or SandboxLimits()
    with tempfile.TemporaryDirectory(prefix="pasture-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        command = [sys.executable, "-I", "-c", _GUARD, path]
        if network_namespace_available():
            command = ["unshare", "-rn", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(command, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=_limit(limits), start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            return SandboxResult("timeout", None, _tail(stderr or stdout))
    if proc.returncode == -signal.SIGXCPU:  # the CPU limit ran out before the wall clock did
        return SandboxResult("timeout", proc.returncode, _tail(stderr or stdout))
    status = "passed" if proc.returncode == 0 else "failed"
    return SandboxResult(status, proc.returncode, _tail(stderr or stdout))


def _tail(data: bytes, chars: int = 500) -> str:
    return data.decode("utf-8", errors="replace")[-chars:]


def run_programs(programs: list[str], limits: SandboxLimits | None = None, workers: int = 2) -> list[SandboxResult]:
    """`run_program` for many programs, `workers` subprocesses at a time."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))
