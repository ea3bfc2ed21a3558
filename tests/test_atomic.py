"""Atomic writes, the sweeping of temporaries left by killed writes, and the one-run-per-output-folder lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overspn import atomic
from overspn.atomic import LOCK_NAME, atomic_output, atomic_write_text, output_lock, sweep_stale_temporaries
from overspn.errors import ConfigurationError

SRC = str(Path(atomic.__file__).parents[1])


def python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp*"))


def test_a_write_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "out.json", "{}")
    assert (tmp_path / "out.json").read_text() == "{}"
    assert temporaries(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "out.json") as temporary:
        temporary.write_text("partial")
        assert temporary.name.startswith(".out.json.") and f"-{os.getpid()}-" in temporary.name
        assert temporary.name.endswith(".tmp.json")
        raise RuntimeError("the writer failed")
    assert (tmp_path / "out.json").read_text() == "{}" and temporaries(tmp_path) == []


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from overspn.atomic import atomic_output
with atomic_output(Path(sys.argv[1])) as temporary:
    temporary.write_text("half written")
    print(temporary, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_temporaries_of_killed_writes_are_swept(tmp_path: Path) -> None:
    writer = python(_KILLED_WRITER, str(tmp_path / "model.ospn"))
    out, _ = writer.communicate(timeout=120)
    assert writer.returncode == -signal.SIGKILL
    left = Path(out.strip())
    assert temporaries(tmp_path) == [left] and not (tmp_path / "model.ospn").exists()
    # a write in progress (this process's), an old-style temporary and unrelated hidden files
    with atomic_output(tmp_path / "live.ospn") as live:
        live.write_text("in progress")
        old_style = tmp_path / ".results.json.0123abcd.tmp.json"
        recent_old_style = tmp_path / ".other.json.89abcdef.tmp.json"
        other = tmp_path / ".hidden.tmp"
        elsewhere = tmp_path / f".x.json.{'f' * 6}-{dead_pid()}-01234567.tmp.json"  # another host's
        for path in (old_style, recent_old_style, other, elsewhere):
            path.write_text("x")
        day_ago = time.time() - 2 * 24 * 3600
        os.utime(old_style, (day_ago, day_ago))
        removed = sweep_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([left, old_style])
        assert live.exists() and recent_old_style.exists() and other.exists() and elsewhere.exists()
        # by age alone: the writer of these cannot be checked from here
        assert sorted(sweep_stale_temporaries(tmp_path, older_than_seconds=0)) == sorted([recent_old_style,
                                                                                          elsewhere])
        assert live.exists()
    assert (tmp_path / "live.ospn").read_text() == "in progress"


def test_sweep_of_a_missing_folder_and_recursively(tmp_path: Path) -> None:
    assert sweep_stale_temporaries(tmp_path / "absent") == []
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    stale = below / f".m.ospn.{atomic._host_tag()}-{dead_pid()}-0123abcd.tmp.ospn"
    stale.write_text("x")
    assert sweep_stale_temporaries(tmp_path) == []
    assert sweep_stale_temporaries(tmp_path, recursive=True) == [stale]


def test_lock_records_the_holder_and_is_released(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    with output_lock(folder, "train nltcs") as lock:
        assert lock == folder / LOCK_NAME
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["description"] == "train nltcs" and holder["command"] and holder["started"] <= time.time()
        with pytest.raises(ConfigurationError) as caught, output_lock(folder):
            pass
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and holder["command"] in message and str(folder) in message
        assert lock.exists()  # the refused attempt did not remove the holder's lock
    assert not (folder / LOCK_NAME).exists()
    with pytest.raises(KeyError), output_lock(folder):
        raise KeyError("the run failed")
    assert not (folder / LOCK_NAME).exists()


_HOLDER = """
import sys, time
from overspn.atomic import output_lock
with output_lock(sys.argv[1], "holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_live_holder_in_another_process_refuses_a_second_run(tmp_path: Path) -> None:
    holder = python(_HOLDER, str(tmp_path), "--marker-argument")
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigurationError) as caught, output_lock(tmp_path):
            pass
        assert f"pid {holder.pid}" in str(caught.value) and "--marker-argument" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock is stale and is taken over
    with output_lock(tmp_path, "second") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_stale_unreadable_and_foreign_locks(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "command": "overspn train"}))
    with output_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text("")  # a creator killed before it wrote: taken over once old
    old = time.time() - 60
    os.utime(lock, (old, old))
    with output_lock(tmp_path):
        pass
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "overspn reproduce"}))
    with pytest.raises(ConfigurationError, match="pid 1 on elsewhere.example.*overspn reproduce"), \
            output_lock(tmp_path):
        pass
    assert lock.exists()


_RACER = """
import sys, time
from overspn.atomic import output_lock
from overspn.errors import ConfigurationError
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    with output_lock(sys.argv[1]):
        time.sleep(4.0)
    print("won")
except ConfigurationError:
    print("refused")
"""


@pytest.mark.slow
def test_two_runs_racing_for_one_folder_one_wins(tmp_path: Path) -> None:
    start = time.time() + 6.0  # after both have imported overspn
    racers = [python(_RACER, str(tmp_path), str(start)) for _ in range(2)]
    outcomes = sorted(racer.communicate(timeout=120)[0].strip() for racer in racers)
    assert outcomes == ["refused", "won"]
