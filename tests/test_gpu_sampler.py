"""GpuSampler against a fake nvidia-smi put first on PATH (POSIX), and without one (everywhere)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pytest_gemdirect.gpu_sampler import NOT_FOUND_NOTE, GpuSampler, parse_query_output

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the fake nvidia-smi is a POSIX script")

FAKE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    mode = os.environ.get("FAKE_NVSMI_MODE", "ok")
    calls = Path(os.environ["FAKE_NVSMI_CALLS"])
    with calls.open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {' '.join(sys.argv[1:])}\\n")
    if mode == "hang":
        time.sleep(120)
    elif mode == "fail":
        msg = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        print(msg, file=sys.stderr)
        sys.exit(9)
    elif mode == "two":
        print("2025/11/11 14:02:03.120, 20480, 24576, 97")
        print("2025/11/11 14:02:03.121, [N/A], 8192, [N/A]")
    else:
        n = len(calls.read_text(encoding="utf-8").splitlines())
        print(f"2025/11/11 14:02:0{n % 10}.000, {1000 * n}, 24576, {10 * n}")
    """
)


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable ``nvidia-smi`` first on PATH; returns the file it logs each call to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "fake_nvidia_smi.py"
    script.write_text(FAKE, encoding="utf-8")
    launcher = bin_dir / "nvidia-smi"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_NVSMI_CALLS", str(calls))
    return calls


def _join(sampler: GpuSampler, timeout: float = 15.0) -> None:
    """Wait for the sampler thread to end on its own (max_samples or failures), bounded."""
    thread = sampler._thread
    assert thread is not None
    thread.join(timeout=timeout)
    assert not thread.is_alive(), f"the sampler thread did not end within {timeout} s"


def test_without_nvidia_smi_it_says_so_and_never_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    sampler = GpuSampler()
    assert not sampler.available and sampler.note == NOT_FOUND_NOTE
    assert sampler.start() is sampler and not sampler.running
    assert sampler.stop() == []
    assert sampler.summary() == {"available": False, "note": NOT_FOUND_NOTE, "rounds": 0, "gpus": []}


@posix_only
def test_samples_until_max_samples_with_the_documented_query(fake_smi: Path) -> None:
    sampler = GpuSampler(interval_s=0.05, max_samples=4)
    assert sampler.available and sampler.note is None
    sampler.start()
    _join(sampler)
    samples = sampler.stop()

    assert [s["memory_used_mib"] for s in samples] == [1000.0, 2000.0, 3000.0, 4000.0]
    assert [s["utilization_pct"] for s in samples] == [10.0, 20.0, 30.0, 40.0]
    assert all(s["memory_total_mib"] == 24576.0 and s["gpu"] == 0 for s in samples)
    times = [s["t"] for s in samples]
    assert times == sorted(times) and len(set(times)) == 4  # one sample a round, in order
    assert sampler.note == "sampling stopped after max_samples = 4 rounds"
    args = fake_smi.read_text(encoding="utf-8").splitlines()[0].split(" ", 1)[1]
    assert (
        args == "--query-gpu=timestamp,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits"
    )
    summary = sampler.summary()["gpus"][0]
    assert summary["peak_memory_used_mib"] == 4000.0 and summary["mean_utilization_pct"] == 25.0


@posix_only
def test_stop_ends_a_hanging_nvidia_smi_promptly(fake_smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVSMI_MODE", "hang")
    sampler = GpuSampler(interval_s=5.0)
    assert sampler.call_timeout_s == 10.0  # longer than stop() waits for the thread (2 s)
    sampler.start()
    deadline = time.monotonic() + 15
    while not fake_smi.read_text(encoding="utf-8").strip():  # the call is in flight
        assert time.monotonic() < deadline, "the fake nvidia-smi never started"
        time.sleep(0.02)
    pid = int(fake_smi.read_text(encoding="utf-8").split()[0])
    proc = psutil.Process(pid)

    assert sampler.stop() == []
    # stop() waits 2 s at most for the thread, and the call's own timeout is 10 s: the thread
    # has ended only because stop() killed the call
    assert not sampler.running
    assert proc.wait(timeout=30) in (None, -9)  # the in-flight nvidia-smi was killed, and reaped


@posix_only
def test_a_failing_nvidia_smi_stops_sampling_with_a_note(
    fake_smi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NVSMI_MODE", "fail")
    sampler = GpuSampler(interval_s=0.05)
    sampler.start()
    _join(sampler)
    assert sampler.stop() == []
    assert sampler.note is not None
    assert sampler.note.startswith("nvidia-smi failed 3 times in a row, sampling stopped: exit code 9")
    assert "couldn't communicate with the NVIDIA driver" in sampler.note


@posix_only
def test_several_gpus_and_not_available_values(fake_smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVSMI_MODE", "two")
    with GpuSampler(interval_s=0.05, max_samples=1) as sampler:
        _join(sampler)
    samples = sampler.samples
    assert [(s["gpu"], s["memory_used_mib"], s["utilization_pct"]) for s in samples] == [
        (0, 20480.0, 97.0),
        (1, None, None),
    ]
    assert samples[1]["memory_total_mib"] == 8192.0
    assert [g["gpu"] for g in sampler.summary()["gpus"]] == [0, 1]


def test_parse_skips_lines_that_are_not_samples() -> None:
    text = "2025/11/11 14:02:03.120, 20480, 24576, 97\n\nNo devices were found\n, [N/A], [N/A], [N/A]\n"
    assert parse_query_output(text, 1.23456) == [
        {
            "t": 1.235,
            "gpu": 0,
            "memory_used_mib": 20480.0,
            "memory_total_mib": 24576.0,
            "utilization_pct": 97.0,
            "timestamp": "2025/11/11 14:02:03.120",
        }
    ]
