"""``--keep-runs``: the oldest run directories the harness made are pruned, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.outside import PIPELINE_MODULE, runpytest


def _old_run(logs: Path, name: str, *, summary: bool = True) -> Path:
    run = logs / name
    run.mkdir(parents=True)
    if summary:
        (run / "run-summary.json").write_text("{}\n", encoding="utf-8")
    (run / "report.html").write_text("<html></html>", encoding="utf-8")
    return run


def test_keep_runs_prunes_only_the_oldest_harness_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pipeline=PIPELINE_MODULE)
    logs = pytester.path / "logs"
    oldest = _old_run(logs, "20250101-000000")
    older = _old_run(logs, "20250101-000000-1")
    kept = _old_run(logs, "20250102-000000")
    not_ours = [
        _old_run(logs, "20240101-000000", summary=False),  # our name, but no summary: not ours
        _old_run(logs, "holiday-photos"),
        logs / "notes.txt",
    ]
    not_ours[-1].write_text("keep me", encoding="utf-8")

    result = runpytest(pytester, "-p", "no:cacheprovider", "-m", "env", "--keep-runs", "2")

    assert result.ret == 0, result.stdout.str()
    assert not oldest.exists() and not older.exists()
    assert kept.is_dir()
    assert all(path.exists() for path in not_ours)
    runs = sorted(p.name for p in logs.iterdir() if p.name.startswith("2026") or p.name.startswith("2025"))
    assert len(runs) == 2 and runs[0] == kept.name  # this run and the newest old one


def test_keep_runs_zero_keeps_every_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pipeline=PIPELINE_MODULE)
    logs = pytester.path / "logs"
    olds = [_old_run(logs, f"2025010{n}-000000") for n in range(1, 4)]

    result = runpytest(pytester, "-p", "no:cacheprovider", "-m", "env", "--keep-runs", "0")

    assert result.ret == 0, result.stdout.str()
    assert all(run.is_dir() for run in olds)
