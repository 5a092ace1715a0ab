"""How long the project's own suite takes, and whether it holds on a busy machine (issue 18).

Runs the README's test command (read from the README's "Test the harness itself" section, so the
figure is always of the command a newcomer types) three times, then three times more with a
CPU-bound load beside it (two busy Python processes for the whole run), and prints per run the
wall time, the CPU time of the suite's process tree, the outcome line and the ten slowest tests;
then the median wall and CPU of each half. Exits 1 when any run failed: the loaded runs must pass.

    python benchmarks/test_suite.py [--runs 3] [--load 2] [--only idle|loaded] [-- extra pytest args]

Run it from the repository's root on an otherwise idle machine for the figure the README quotes.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Test the harness itself"
SLOWEST = 10


def readme_test_command(readme: Path = REPO / "README.md") -> list[str]:
    """The first ``pytest`` line of the README's code block under "Test the harness itself"."""
    text = readme.read_text(encoding="utf-8")
    after = text[text.index(SECTION) :]
    block = after.split("```", 2)[1]
    line = next(line for line in block.splitlines() if line.strip().startswith("pytest "))
    return shlex.split(line)


@dataclass
class Timing:
    """One run of the suite."""

    loaded: bool
    wall_s: float
    cpu_s: float | None  # user + system of pytest and everything it waited for; None off POSIX
    returncode: int
    outcome: str
    slowest: list[str]


def children_cpu() -> float | None:
    """CPU seconds of this process's children that have ended and been waited for."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_load(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` busy Python processes: a CPU-bound neighbour for the whole run."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def run_suite(command: list[str], extra: list[str], *, load: int) -> Timing:
    argv = [sys.executable, "-m", *command, "-p", "no:cacheprovider", f"--durations={SLOWEST}", *extra]
    neighbours = start_load(load)
    try:
        cpu_before = children_cpu()
        started = time.monotonic()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        cpu_after = children_cpu()  # before the load is reaped: only the suite's tree is counted
    finally:
        stop_load(neighbours)
    lines = done.stdout.splitlines()
    outcome = next((line.strip("= ") for line in reversed(lines) if re.search(r" in [\d.]+s", line)), "?")
    durations = [line for line in lines if re.match(r"\s*\d+\.\d+s (call|setup|teardown) ", line)]
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    if done.returncode != 0:  # keep what failed where the reader sees it
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        print("\n".join(failed or lines[-40:]), file=sys.stderr)
    return Timing(load > 0, wall, cpu, done.returncode, outcome, durations[:SLOWEST])


def show(timing: Timing, number: int) -> None:
    cpu = "n/a" if timing.cpu_s is None else f"{timing.cpu_s:.0f} s"
    where = "with load" if timing.loaded else "idle"
    print(
        f"run {number} ({where}): wall {timing.wall_s:.0f} s, CPU {cpu},"
        f" exit {timing.returncode}: {timing.outcome}"
    )
    for line in timing.slowest:
        print(f"    {line.strip()}")
    sys.stdout.flush()


def medians(timings: list[Timing], loaded: bool) -> str:
    chosen = [t for t in timings if t.loaded is loaded]
    if not chosen:
        return ""
    wall = statistics.median(t.wall_s for t in chosen)
    cpus = [t.cpu_s for t in chosen if t.cpu_s is not None]
    cpu = f"{statistics.median(cpus):.0f} s" if cpus else "n/a"
    passed = sum(t.returncode == 0 for t in chosen)
    name = "with load" if loaded else "idle"
    minutes = f"{wall / 60:.1f} min"
    return (
        f"{name:>9}: median wall {wall:.0f} s ({minutes}), median CPU {cpu}, passed {passed} of {len(chosen)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs in each half (default 3)")
    parser.add_argument(
        "--load", type=int, default=2, help="busy processes beside the loaded runs (default 2)"
    )
    parser.add_argument("--only", choices=("idle", "loaded"), help="one half only")
    parser.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    command = readme_test_command()
    print(f"the README's test command: {shlex.join(command)}  (+ -p no:cacheprovider --durations={SLOWEST})")
    halves = [False, True] if args.only is None else [args.only == "loaded"]
    timings: list[Timing] = []
    for loaded in halves:
        for _ in range(args.runs):
            timing = run_suite(command, args.extra, load=args.load if loaded else 0)
            timings.append(timing)
            show(timing, len(timings))
    print()
    for loaded in halves:
        print(medians(timings, loaded))
    return 0 if all(t.returncode == 0 for t in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
