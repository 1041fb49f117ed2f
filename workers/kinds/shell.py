"""shell: run one program the admin allows, with arguments, never through a shell.

The command is an argument list: argv[0] must be exactly one of the absolute paths in the
SHELL_COMMANDS setting (comma-separated; empty, the default, turns the kind off), and every
argument reaches the program as it is, so `;`, `$(...)`, `|` and backticks in an argument are
plain characters. The allow-list is checked when the job is submitted (a 400 naming
`params.argv`) and again on the worker just before the program starts. Submitting the kind also
needs the `jobs.run_shell` permission.

The program runs as SHELL_USER (default portal-shell), an unprivileged user of its own that the
worker (running as root) switches to: it cannot read the worker's /proc/<pid>/environ, its
memory or the portal's secret files, nor write in any team's space. Its working folder is in
the job's team space. A worker that is not root cannot switch users: shell jobs then fail, unless
SHELL_USER is set empty (the program then runs as the worker's own user, with its rights).

The program runs in its own session with an almost empty environment, its address space
(RLIMIT_AS) limited to memory_mb and its CPU time limited as a backstop; it is stopped after
timeout_s, and stopped (SIGTERM, then SIGKILL) when the job is cancelled. Its stdout and stderr
stream into the job's log line by line (stderr as warnings). A non-zero exit fails the job.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import resource
import selectors
import shlex
import signal
import subprocess
import sys
import time
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, field_validator

from workers import data
from workers.config import CANCEL_GRACE_S, env_list, env_str
from workers.context import CANCEL_POLL_S, Cancelled
from workers.kinds import JobKind, Params

SETTING = "SHELL_COMMANDS"
USER_SETTING = "SHELL_USER"
DEFAULT_USER = "portal-shell"
ENV_PATH = "/usr/bin:/bin"
# Characters a shell would give a meaning to: refused in the program's path (arguments may
# hold anything but NUL, since no shell ever sees them).
SHELL_CHARS = frozenset(";&|$`()<>{}[]*?!~#\\'\"\n\r\t ")
MAX_LINE_BYTES = 8192  # a longer output line is cut, the rest of it dropped
MAX_LOG_LINES = 100_000  # lines beyond this are counted, not logged
READ_BYTES = 1 << 16
TICK_S = 0.2
# After the program exits, how long output still open in a leftover of its group is read.
DRAIN_S = 1.0


def allowed_commands() -> list[str]:
    """The programs the admin allows (SHELL_COMMANDS), read each time: the web and the workers
    each check their own setting."""
    return env_list(SETTING, [])


def check_command(program: str) -> str:
    """argv[0]: exactly one of the allowed absolute paths, no PATH lookup, no shell syntax."""
    allowed = allowed_commands()
    if not allowed:
        raise ValueError(f"shell commands are off: the admin allows no program ({SETTING} is "
                         "empty)")
    if any(char in SHELL_CHARS for char in program):
        raise ValueError("argv[0] must be the plain path of a program: no spaces or shell "
                         "characters such as ; | & $ ` ( ) < >")
    if not os.path.isabs(program) or os.path.normpath(program) != program:
        raise ValueError("argv[0] must be the absolute path of an allowed program, e.g. "
                         "/usr/bin/env (there is no PATH lookup)")
    if program not in allowed:
        raise ValueError(f"{program} is not among the programs the admin allows ({SETTING})")
    return program


def _argument(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


def _command_line(value):
    """A command line given as one string: a JSON array, or words split the way a shell
    splits them (quotes respected; nothing is expanded, and no shell runs the result)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("must be a JSON array of strings") from None
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split the command line: {exc}") from None


Argument = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_argument)]


class ShellParams(Params):
    argv: Annotated[list[Argument], BeforeValidator(_command_line)] = Field(
        min_length=1, max_length=100,
        description="The program and its arguments, e.g. [\"/usr/bin/printf\", \"%s\\n\", "
        "\"hello\"]. The program is the absolute path of one the admin allows "
        "(SHELL_COMMANDS); the arguments reach it as they are: no shell runs, so ; | $( ) "
        "and quotes have no special meaning. Given as one string instead of a list, it is "
        "split into words the way a shell would (quotes respected, nothing expanded).")
    timeout_s: int = Field(600, ge=1, le=86_400,
                           description="Stop the program after this many seconds (the job "
                           "fails).")
    memory_mb: int = Field(1024, ge=16, le=65_536,
                           description="The program's address space, in MiB (RLIMIT_AS): an "
                           "allocation beyond it fails.")
    cwd: data.OutputPath | None = Field(None, description="The working folder, in your "
                                        "team's space (by default the space's top folder).")

    @field_validator("argv")
    @classmethod
    def _allowed(cls, argv: list[str]) -> list[str]:
        check_command(argv[0])
        return argv


# --- running the program -------------------------------------------------------------------


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_LIBC = _libc()
PR_SET_PDEATHSIG = 1


def _within(which: int, value: int) -> int:
    """A limit no higher than this process's own hard limit (which a child cannot raise)."""
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def limiter(memory_mb: int, cpu_s: int):
    """What the child runs between fork and exec: its limits, and death with its parent (a
    pool process the node agent kills takes its program with it). Everything it needs is
    computed here, before the fork."""
    memory = _within(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    cpu = (_within(resource.RLIMIT_CPU, cpu_s), _within(resource.RLIMIT_CPU, cpu_s + 5))
    parent = os.getpid()
    kill = int(signal.SIGKILL)
    prctl = _LIBC.prctl if _LIBC is not None else None

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, cpu)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl
                os.kill(os.getpid(), kill)

    return limit


class CommandFailed(RuntimeError):
    """The program exited with a non-zero status, or was killed by a signal."""


def shell_user() -> str:
    """The user programs run as (SHELL_USER; set but empty: the worker's own)."""
    value = os.environ.get(USER_SETTING)
    return DEFAULT_USER if value is None else (env_str(USER_SETTING) or "")


def identity() -> pwd.struct_passwd | None:
    """The account programs run as, or None for the worker's own (SHELL_USER empty, or the
    worker already is that user)."""
    name = shell_user()
    if not name:
        return None
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise CommandFailed(f"{USER_SETTING} {name!r} is not a user on this node (make run and "
                            "the image create it: scripts/shell-user.sh)") from None
    if account.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise CommandFailed(f"this worker is not root, so it cannot run programs as "
                            f"{USER_SETTING} {name!r}: run it as root, or set {USER_SETTING} "
                            "empty to run them as the worker's own user")
    if account.pw_uid == 0:
        raise CommandFailed(f"{USER_SETTING} {name!r} is root: name an unprivileged user")
    return account


def working_folder(params) -> os.PathLike:
    """The job's working folder in its team's space. It stays the worker's: the shell user is
    one for every team, so a folder it could write in would be writable by every team's
    programs."""
    if params.cwd:
        cwd = data.resolve(params.cwd, write=True)
        if not cwd.is_dir():
            raise CommandFailed(f"cwd {params.cwd!r}: no such folder")
    else:
        space = data.current_space()
        cwd = data.team_root(space.team) if space is not None else data.data_root()
        cwd.mkdir(parents=True, exist_ok=True)
    return cwd


class Lines:
    """Splits one stream's bytes into text lines; cuts a line that is too long."""

    def __init__(self, level: str):
        self.level = level
        self.count = 0
        self._partial = bytearray()
        self._skipping = False  # dropping the rest of a line that was cut

    @staticmethod
    def _text(raw: bytes) -> str:
        return raw.decode("utf-8", "replace").rstrip("\r")

    def feed(self, chunk: bytes) -> list[str]:
        self._partial += chunk
        *complete, rest = bytes(self._partial).split(b"\n")
        self._partial = bytearray(rest)
        lines = []
        for raw in complete:
            if self._skipping:
                self._skipping = False
                continue
            lines.append(self._cut(raw))
        if len(self._partial) > MAX_LINE_BYTES:
            if not self._skipping:
                lines.append(self._cut(bytes(self._partial)))
            self._skipping = True
            self._partial.clear()
        self.count += len(lines)
        return lines

    def _cut(self, raw: bytes) -> str:
        if len(raw) <= MAX_LINE_BYTES:
            return self._text(raw)
        return self._text(raw[:MAX_LINE_BYTES]) + " [line cut]"

    def end(self) -> list[str]:
        """The last line, if the output did not end with a newline."""
        lines = [] if self._skipping or not self._partial else [self._cut(bytes(self._partial))]
        self._partial.clear()
        self.count += len(lines)
        return lines


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the program exited, without reaping it: while it is a zombie its process group
    id cannot be reused, so the group can still be killed safely."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.returncode is not None:
        return  # reaped: its group id may belong to someone else by now
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Session:
    """The running program, its two pipes read without threads, and the lines logged."""

    def __init__(self, ctx, proc: subprocess.Popen):
        self.ctx, self.proc = ctx, proc
        self.selector = selectors.DefaultSelector()
        self.streams = {}
        for pipe, level in ((proc.stdout, "info"), (proc.stderr, "warning")):
            os.set_blocking(pipe.fileno(), False)
            self.selector.register(pipe.fileno(), selectors.EVENT_READ)
            self.streams[pipe.fileno()] = (pipe, Lines(level))
        self.stdout, self.stderr = (lines for _, lines in self.streams.values())
        self.logged = 0
        self.capped = False

    def log(self, lines: list[str], level: str) -> None:
        for line in lines:
            if self.logged < MAX_LOG_LINES:
                self.logged += 1
                self.ctx.log(line, level=level)
            elif not self.capped:
                self.capped = True
                self.ctx.log(f"the log keeps the first {MAX_LOG_LINES} lines: later output is "
                             "counted, not kept", level="warning")

    def read(self, timeout: float) -> None:
        """Log what the program wrote, waiting up to `timeout` for something."""
        if not self.streams:
            time.sleep(timeout)
            return
        for key, _ in self.selector.select(timeout):
            pipe, lines = self.streams[key.fd]
            try:
                chunk = os.read(key.fd, READ_BYTES)
            except BlockingIOError:
                continue
            if chunk:
                self.log(lines.feed(chunk), lines.level)
            else:
                self.log(lines.end(), lines.level)
                self.selector.unregister(key.fd)
                del self.streams[key.fd]
                pipe.close()
        self.ctx.progress(self.stdout.count + self.stderr.count, unit="lines")

    def drain(self, seconds: float) -> None:
        """Read what is left until both pipes close, for at most `seconds`."""
        end = time.monotonic() + seconds
        while self.streams and (left := end - time.monotonic()) > 0:
            self.read(min(left, TICK_S))

    def stop(self, grace: float) -> None:
        """SIGTERM the program's group, SIGKILL it after `grace` s, and reap the program."""
        _signal_group(self.proc, signal.SIGTERM)
        end = time.monotonic() + grace
        while not _exited(self.proc) and time.monotonic() < end:
            self.read(min(TICK_S / 4, max(0.0, end - time.monotonic())))
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.returncode is None:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait()
        for pipe, _ in self.streams.values():
            pipe.close()
        self.streams.clear()
        self.selector.close()


def cancel_grace() -> float:
    """Seconds a cancelled program gets between SIGTERM and SIGKILL: well within the node
    agent's own CANCEL_GRACE_S, after which it kills the whole pool process."""
    return max(0.2, CANCEL_GRACE_S / 2 - CANCEL_POLL_S)


def run(ctx, params: ShellParams):
    argv = list(params.argv)
    check_command(argv[0])  # again, on this node, with this node's setting
    if not os.access(argv[0], os.X_OK) or not os.path.isfile(argv[0]):
        raise CommandFailed(f"{argv[0]} is not an executable file on this node")
    account = identity()
    cwd = working_folder(params)
    env = {"PATH": ENV_PATH, "LANG": "C.UTF-8", "HOME": str(cwd)}
    as_user = {}
    if account is not None:
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    ctx.log(f"$ {shlex.join(argv)}")
    started = time.monotonic()
    deadline = started + params.timeout_s
    proc = subprocess.Popen(
        argv, shell=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, cwd=cwd, env=env, close_fds=True,
        preexec_fn=limiter(params.memory_mb, params.timeout_s + 5), **as_user)
    try:
        session = Session(ctx, proc)
    except BaseException:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    try:
        while not _exited(proc):
            session.read(TICK_S)
            if ctx.cancelled():
                session.stop(cancel_grace())
                session.drain(DRAIN_S)
                raise Cancelled()
            if time.monotonic() >= deadline:
                session.stop(cancel_grace())
                session.drain(DRAIN_S)
                raise TimeoutError(f"timed out after {params.timeout_s} s")
        # What the program left running in its group ends with it.
        _signal_group(proc, signal.SIGKILL)
        code = proc.wait()
        session.drain(DRAIN_S)
    finally:
        session.close()
    seconds = round(time.monotonic() - started, 3)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise CommandFailed(f"killed by {name} after {seconds:g} s")
    if code != 0:
        raise CommandFailed(f"exited with {code}")
    ctx.log(f"exited with 0 after {seconds:g} s")
    return {"exit_code": code, "stdout_lines": session.stdout.count,
            "stderr_lines": session.stderr.count, "seconds": seconds}


KINDS = [
    JobKind(
        name="shell",
        title="Shell command",
        description="Runs a program the admin allows (SHELL_COMMANDS) with your arguments, "
        "never through a shell, under a time and memory limit; its output is the log. Needs "
        "the run_shell permission.",
        params=ShellParams,
        run=run,
        permission="jobs.run_shell",
    ),
]
