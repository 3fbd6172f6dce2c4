"""Ringing doorbells: the producer's side, done in a disposable helper process.

A follower's doorbell is a POSIX semaphore file in /dev/shm that its owner (the
follower's user) can always truncate, rewrite or replace. Posting one maps it,
so a truncated file kills the poster with SIGBUS and a rewritten one can make
glibc abort (a ``sem_t`` of 0xFF bytes): neither is catchable in Python. So the
producer never maps a doorbell itself. :class:`Ringer` keeps one helper
process (this file run as a script, standard library only) that does every
ring; a ring is a line written to its stdin, which it answers with the same
line once done. A helper that dies or stalls costs one missed ring, which the
followers' inotify watch and safety poll cover (docs/pitfalls.md 12); it is
replaced at the next ring and the cycle never fails for it
(docs/decisions.md §30).

The helper rings only what looks like a doorbell of a live follower
(:func:`doorbells`): a regular 32-byte file named
``sem.hollow.<root id>.<namespace id>.<pid>.<n>`` owned by the user that runs
process ``<pid>``. Names of other users' files are ignored, not unlinked
(/dev/shm is sticky: unlinking them fails). It opens each with
``O_NOFOLLOW | O_NONBLOCK``, checks type, size and owner on the open file,
checks the ``sem_t`` is plausible, and only then posts it (``sem_post(3)`` on a
mapping of its own). Doorbells of dead processes are removed when they are the
helper's own user's, ignored otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import select
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable

SEM_DIR = "/dev/shm"  # noqa: S108 - where glibc keeps named semaphores (sem_overview(7))
SEM_SIZE = 32  # sizeof(sem_t) on 64-bit Linux
#: glibc's 64-bit ``struct new_sem``: the value in the low 32 bits of a u64, waiters in the high
#: 32, then ``private`` (FUTEX_PRIVATE_FLAG, 128, for a process-shared semaphore).
_SEM = struct.Struct("<QI")
_SEM_VALUE_MAX = 0x7FFFFFFF
_SHARED = 128
#: A helper that has not answered a ring for this long is replaced.
STALL_SECONDS = 10.0

log = logging.getLogger("hollow")
_Post = Callable[[int], int]  # libc's sem_post, through ctypes


def pid_of(entry: str) -> int | None:
    """The PID a doorbell's name carries (``....<pid>.<n>``), or None."""
    parts = entry.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1])


def uids_of(pid: int) -> frozenset[int] | None:
    """The uids of process *pid* (real, effective, saved, filesystem), or None when there is none.

    From ``/proc/<pid>/status``, which anyone may read: the owner of ``/proc/<pid>`` itself is root
    for a process that changed its uid (a gunicorn worker dropping to ``user=``; proc(5), "dumpable")."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return frozenset(int(u) for u in line.split()[1:5])
    except (FileNotFoundError, ProcessLookupError):
        return None
    except (OSError, ValueError):
        return frozenset()
    return frozenset()


def doorbells(start: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Entries of /dev/shm whose name starts with *start*: ([(live doorbell, its owner's uid)], [dead ones]).

    A live doorbell is owned by a user the PID in its name runs as; a file named like a live
    process's doorbell but owned by someone else is neither (planted: ignored).
    """
    try:
        names = [n for n in os.listdir(SEM_DIR) if n.startswith(start)]
    except FileNotFoundError:
        return [], []
    live: list[tuple[str, int]] = []
    dead: list[str] = []
    for entry in names:
        pid = pid_of(entry)
        if pid is None:
            continue
        try:
            st = os.lstat(os.path.join(SEM_DIR, entry))
        except FileNotFoundError:
            continue
        uids = uids_of(pid)
        if uids is None:
            dead.append(entry)
        elif st.st_uid in uids and stat.S_ISREG(st.st_mode):
            live.append((entry, st.st_uid))
    return live, dead


def _libc_sem_post() -> _Post:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.sem_post
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def post(path: str, owner: int, sem_post: _Post) -> str | None:
    """Post the semaphore at *path* if it is one owned by *owner*; None when posted, else why not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open ({e.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != SEM_SIZE or st.st_uid != owner:
            return "not a 32-byte regular file of its process's user"
        mm = mmap.mmap(fd, SEM_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as e:
        return f"cannot map ({e.strerror})"
    finally:
        os.close(fd)
    try:
        data, private = _SEM.unpack_from(mm)
        value, waiters = data & 0xFFFFFFFF, data >> 32
        if private != _SHARED or value >= _SEM_VALUE_MAX or waiters > 0xFFFF:
            return f"not a plausible semaphore (value {value}, waiters {waiters}, flags {private})"
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            if sem_post(ctypes.addressof(anchor)) != 0:
                return f"sem_post failed ({os.strerror(ctypes.get_errno())})"
        finally:
            del anchor
        return None
    finally:
        mm.close()


def ring_pass(start: str, sem_post: _Post, reported: set[tuple[str, str]] | None = None) -> tuple[int, int]:
    """Post every live doorbell under *start* once and remove our own dead ones: (rung, removed).

    A doorbell skipped is said once on stderr per reason (*reported* remembers), not at every ring."""
    live, dead = doorbells(start)
    me = os.geteuid()
    removed = 0
    for entry in dead:
        path = os.path.join(SEM_DIR, entry)
        with contextlib.suppress(OSError):
            if os.lstat(path).st_uid == me:  # another user's is not ours to remove (sticky /dev/shm)
                os.unlink(path)
                removed += 1
    rung = 0
    for entry, owner in live:
        why = post(os.path.join(SEM_DIR, entry), owner, sem_post)
        if why is None:
            rung += 1
        elif reported is None or (entry, why) not in reported:
            if reported is not None:
                reported.add((entry, why))
            print(f"hollow-ring: skipped {entry}: {why}", file=sys.stderr, flush=True)
    return rung, removed


def _helper(start: str) -> int:
    """The helper's loop: each line read is a ring (those queued meanwhile coalesce); answer it."""
    sem_post = _libc_sem_post()
    reported: set[tuple[str, str]] = set()
    pending = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            return 0
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        if not lines:
            continue
        rung, removed = ring_pass(start, sem_post, reported)
        try:
            os.write(1, b"%s %d %d\n" % (lines[-1], rung, removed))
        except BrokenPipeError:
            return 0  # the producer closed us: it is done


class Ringer:
    """The producer's doorbell ringer for one namespace: a helper process fed by a pipe.

    :meth:`ring` never blocks and never raises for a follower's doings;
    :meth:`settle` waits until the rings sent so far were carried out.
    """

    def __init__(self, start: str) -> None:
        self.start = start
        self._proc: subprocess.Popen[bytes] | None = None
        self._sent = 0
        self._done = 0
        self._since: float | None = None  # when the oldest unanswered ring was sent
        self._buf = b""
        #: (rung, removed) of the last pass the helper reported.
        self.last: tuple[int, int] = (0, 0)

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), self.start],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        self._sent = self._done = 0
        self._since = None
        self._buf = b""
        return proc

    def _helper_proc(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None:
            self._read_answers(proc)
            rc = proc.poll()
            stalled = self._since is not None and time.monotonic() - self._since > STALL_SECONDS
            if rc is not None or stalled:
                log.warning(
                    "hollow: the doorbell ringer for %s %s; a follower's doorbell may be damaged "
                    "(followers still hear of announcements by inotify and the safety poll); starting another",
                    self.start,
                    f"exited ({_exit_reason(rc)})" if rc is not None else f"did not answer in {STALL_SECONDS:g} s",
                )
                self._reap(proc)
                proc = None
        if proc is None:
            proc = self._proc = self._spawn()
        return proc

    def ring(self) -> None:
        """Ask the helper to post every follower once (coalesced with rings not yet carried out)."""
        try:
            proc = self._helper_proc()
        except OSError as e:  # no interpreter to run it (sys.executable empty or gone): say so every time
            log.warning(
                "hollow: cannot start the doorbell ringer for %s (%s); followers hear of announcements "
                "by inotify and their safety poll only",
                self.start,
                e,
            )
            return
        try:
            assert proc.stdin is not None
            self._sent += 1
            proc.stdin.write(b"%d\n" % self._sent)
            proc.stdin.flush()
            if self._since is None:
                self._since = time.monotonic()
        except (OSError, ValueError) as e:  # a full pipe (it has rings queued) or a helper gone meanwhile
            log.debug("hollow: ring of %s not sent: %s", self.start, e)

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until every ring sent so far was carried out; False on timeout or a dead helper."""
        proc = self._proc
        if proc is None:
            return True
        deadline = time.monotonic() + timeout
        while self._done < self._sent:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                return False
            assert proc.stdout is not None
            select.select([proc.stdout], [], [], min(left, 0.5))
            self._read_answers(proc)
        return True

    def _read_answers(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while True:
            try:
                chunk = os.read(proc.stdout.fileno(), 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not chunk:
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                seq, rung, removed = map(int, line.split())
                self._done = max(self._done, seq)
                self.last = (rung, removed)
        self._since = None if self._done >= self._sent else (self._since or time.monotonic())

    def close(self, timeout: float = 1.0) -> None:
        """Stop the helper once the rings sent are carried out (for at most *timeout* seconds)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if self._done < self._sent:
                self._proc = proc
                self.settle(timeout)
                self._proc = None
            self._reap(proc)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        """End the helper now: it keeps nothing, and one still starting would take its imports' time."""
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if proc.poll() is None:
            proc.kill()  # our own child, by its handle
        proc.wait()


def _exit_reason(rc: int | None) -> str:
    if rc is not None and rc < 0:
        import signal  # noqa: PLC0415

        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"status {rc}"


def ring_once(start: str, timeout: float = 5.0) -> tuple[int, int]:
    """Post every follower under *start* once, through a helper, and wait: (rung, removed)."""
    ringer = Ringer(start)
    try:
        ringer.ring()
        ringer.settle(timeout)
        return ringer.last
    finally:
        ringer.close()


if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1]))
