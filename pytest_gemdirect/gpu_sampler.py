"""GPU memory and utilisation over a run, sampled with ``nvidia-smi`` in a background thread.

``GpuSampler`` asks ``nvidia-smi --query-gpu=timestamp,memory.used,memory.total,utilization.gpu
--format=csv,noheader,nounits`` every ``interval_s`` seconds. Everything is bounded: each call has
a timeout (a wedged driver can hang nvidia-smi) and is killed when it passes it, sampling stops
after ``max_samples`` rounds, and ``stop()`` ends an in-flight call and joins the thread within a
second or two.

Where ``nvidia-smi`` is not on PATH (no NVIDIA GPU, a CI runner, macOS) the sampler is simply
unavailable: ``available`` is False, ``note`` says "nvidia-smi not found on this machine", and
``start()``/``stop()`` do nothing but return no samples. It never fails a run. When nvidia-smi
fails several times in a row, sampling stops and ``note`` says why.

A sample is ``{"t": seconds since start(), "gpu": index, "memory_used_mib", "memory_total_mib",
"utilization_pct", "timestamp": nvidia-smi's own time}``; a value nvidia-smi reports as
``[N/A]`` is None. With several GPUs each round gives one sample per GPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from pytest_gemdirect.processes import join_sliced

QUERY = "timestamp,memory.used,memory.total,utilization.gpu"
NOT_FOUND_NOTE = "nvidia-smi not found on this machine"
_MAX_CONSECUTIVE_FAILURES = 3
_JOIN_S = 2.0


def _number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]", ""


def parse_query_output(text: str, t: float) -> list[dict[str, Any]]:
    """One sample per well-formed CSV line of ``nvidia-smi --query-gpu=<QUERY>`` (others skipped)."""
    samples = []
    index = 0
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            continue
        used, total, util = (_number(f) for f in fields[1:])
        if used is None and total is None and util is None:
            continue
        samples.append(
            {
                "t": round(t, 3),
                "gpu": index,
                "memory_used_mib": used,
                "memory_total_mib": total,
                "utilization_pct": util,
                "timestamp": fields[0],
            }
        )
        index += 1
    return samples


class GpuSampler:
    """Samples GPU memory and utilisation until stopped (see the module docstring)."""

    def __init__(self, interval_s: float = 1.0, max_samples: int = 3600) -> None:
        self.interval_s = max(0.05, float(interval_s))
        self.max_samples = max(1, int(max_samples))
        self.call_timeout_s = max(2.0, min(10.0, 2 * self.interval_s))
        self.executable = shutil.which("nvidia-smi")
        self.available = self.executable is not None
        self.note: str | None = None if self.available else NOT_FOUND_NOTE
        self.rounds = 0
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._started = 0.0

    # --- public ----------------------------------------------------------------------------

    def start(self) -> GpuSampler:
        """Begin sampling (the first sample at once); a no-op when unavailable or running."""
        if not self.available or self._thread is not None:
            return self
        self._stop.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="gemdirect-gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling (an in-flight nvidia-smi is ended) and return every sample so far."""
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            try:
                proc.kill()  # the sampler thread's communicate() then returns and reaps it
            except OSError:
                pass
        thread = self._thread
        if thread is not None:
            join_sliced(thread, _JOIN_S)  # in slices: a Windows join would hold up a Ctrl-C
        return self.samples

    @property
    def samples(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s) for s in self._samples]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def summary(self) -> dict[str, Any]:
        """Peak memory, total memory and mean/peak utilisation per GPU, for the report."""
        per_gpu: dict[int, list[dict[str, Any]]] = {}
        for sample in self.samples:
            per_gpu.setdefault(int(sample["gpu"]), []).append(sample)
        gpus = []
        for index, rows in sorted(per_gpu.items()):
            used = [r["memory_used_mib"] for r in rows if r["memory_used_mib"] is not None]
            total = [r["memory_total_mib"] for r in rows if r["memory_total_mib"] is not None]
            util = [r["utilization_pct"] for r in rows if r["utilization_pct"] is not None]
            gpus.append(
                {
                    "gpu": index,
                    "samples": len(rows),
                    "peak_memory_used_mib": max(used) if used else None,
                    "memory_total_mib": max(total) if total else None,
                    "mean_utilization_pct": round(sum(util) / len(util), 1) if util else None,
                    "peak_utilization_pct": max(util) if util else None,
                }
            )
        return {"available": self.available, "note": self.note, "rounds": self.rounds, "gpus": gpus}

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self.rounds >= self.max_samples:
                self.note = f"sampling stopped after max_samples = {self.max_samples} rounds"
                return
            error = self._sample_once()
            self.rounds += 1
            if error is None:
                failures = 0
            else:
                failures += 1
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    self.note = f"nvidia-smi failed {failures} times in a row, sampling stopped: {error}"
                    return
            if self._stop.wait(self.interval_s):
                return

    def _sample_once(self) -> str | None:
        """One nvidia-smi call; None on success, else what went wrong in words."""
        assert self.executable is not None
        t = time.monotonic() - self._started
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]
        with self._lock:
            if self._stop.is_set():
                return None
            try:
                proc = subprocess.Popen(  # fixed argument list, no shell
                    [self.executable, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    encoding="utf-8",
                    errors="replace",
                    **kwargs,
                )
            except OSError as exc:
                return f"could not run {self.executable}: {exc}"
            self._proc = proc
        try:
            out, err = proc.communicate(timeout=self.call_timeout_s)
        except subprocess.TimeoutExpired:
            _end(proc)
            return f"no answer within {self.call_timeout_s:g} s"
        finally:
            with self._lock:
                self._proc = None
        if self._stop.is_set() and proc.returncode != 0:
            return None  # ended by stop()
        if proc.returncode != 0:
            detail = (err or out).strip().splitlines()
            return f"exit code {proc.returncode}" + (f": {detail[-1][:200]}" if detail else "")
        samples = parse_query_output(out, t)
        if not samples:
            return f"no GPU lines in its output: {out.strip()[:200]!r}"
        with self._lock:
            self._samples.extend(samples)
        return None


def _end(proc: subprocess.Popen[str]) -> None:
    """Kill an nvidia-smi call and reap it (it has no children worth a tree kill)."""
    try:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=_JOIN_S)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
