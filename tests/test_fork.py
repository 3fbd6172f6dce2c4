"""Fork safety (issue 9.20): a forked child re-arms a dataset exactly once, whatever its threads do,
owns no descriptor of its parent's inotify, and never finds a module lock held by a parent's thread."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import movies_producer, run_python
from tests.test_follow import version_data

# In a forked child: several threads make the dataset's first call at once (each preempted just before
# re-arming, so that they overlap); then the child reports its doorbells, follower threads and the inherited inotify fd.
REARM = r"""
import json, os, sys, threading, time
import hollow
from hollow import dataset, doorbell
from watchdog.observers import inotify_c

root = sys.argv[1]
ds = hollow.open("movies", root=root)
parent_fd = inotify_c.InotifyFD.get_instance()._inotify_fd
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    real = dataset.Dataset._after_fork
    def preempted(self):  # a thread preempted between seeing the fork and re-arming
        time.sleep(0.2)
        return real(self)
    dataset.Dataset._after_fork = preempted
    start = threading.Barrier(4)
    def first_call():
        start.wait()
        ds.version
    threads = [threading.Thread(target=first_call) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    try:  # (before the child's own watch exists, which could take the same number)
        os.fstat(parent_fd)
        inherited = os.readlink(f"/proc/self/fd/{parent_fd}")
    except OSError:
        inherited = None
    ds.wait_following(60)  # the follower thread makes its doorbell after the re-arming call returned
    prefix = "sem." + doorbell.prefix(ds.root, "movies") + f"{os.getpid()}."
    bells = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    followers = [t.name for t in threading.enumerate() if t.name.startswith("hollow-follow")]
    child_fd = inotify_c.InotifyFD.get_instance()._inotify_fd
    os.write(w, json.dumps({"bells": len(bells), "followers": followers, "inherited": inherited,
                            "same": child_fd == parent_fd}).encode())
    ds.close()
    os._exit(0)
os.close(w)
got = os.read(r, 65536)
os.waitpid(pid, 0)
ds.close()
print(got.decode())
"""


def test_threads_of_a_forked_child_rearm_its_dataset_once(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        got = run_python(REARM, str(root))
    assert got["bells"] == 1, got
    assert got["followers"] == ["hollow-follow-movies"], got
    assert got["inherited"] is None or not got["inherited"].startswith("anon_inode:inotify"), got


# A parent thread holds each module lock while the main thread forks; the child must not find them held.
LOCKS = r"""
import json, os, sys, threading
import hollow
from hollow import schema, serving

root = sys.argv[1]
held, release = threading.Event(), threading.Event()
def hold():
    with serving._lock, schema._lock:
        held.set()
        release.wait()
t = threading.Thread(target=hold)
t.start()
held.wait()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    signal_ok = True
    import signal
    signal.alarm(20)  # a deadlock ends the child rather than the test
    ds = serving.dataset("movies", root=root)
    with ds.snapshot() as snap:
        title = snap["Movie"][0].title
    serving.close_all()
    os.write(w, json.dumps({"title": title}).encode())
    os._exit(0)
os.close(w)
got = os.read(r, 65536)
_, status = os.waitpid(pid, 0)
release.set()
t.join()
print(json.dumps({"child": got.decode(), "status": status}))
"""


def test_module_locks_held_by_a_parents_thread_do_not_deadlock_the_child(root: Path) -> None:
    with movies_producer(root) as p:
        p.run_cycle(version_data(1))
        got = run_python(LOCKS, str(root))
    assert got["status"] == 0, got
    assert '"title": "v1"' in got["child"], got
