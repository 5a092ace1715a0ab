"""Root conftest: the plugin itself is loaded through its pytest11 entry point."""


def pytest_xdist_auto_num_workers(config: object) -> int:
    """``-n auto`` for this project's own suite: one worker a core, but at least three.

    Most of the suite's time is spent waiting on servers and deadlines, not on the CPU: on 2
    cores three workers took 4 min 44 s where two took 5 min 26 s (idle machine, all passed).
    """
    import os

    return max(3, os.cpu_count() or 1)


def pytest_configure(config: object) -> None:
    """Compile the package's modules once, before the suite's ~150 pipeline subprocesses start.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (some CI images and sandboxes set it), Python never
    writes ``.pyc`` files, so each subprocess compiled every module it imported again: about half
    a second of CPU each. It still reads compiled files that exist, and compileall writes them
    whatever the setting. Done by the xdist controller (or the only process), not by each worker.
    """
    import compileall
    import sys
    from pathlib import Path

    if not sys.dont_write_bytecode or hasattr(config, "workerinput"):
        return
    compileall.compile_dir(Path(__file__).parent / "pytest_gemdirect", quiet=1)
