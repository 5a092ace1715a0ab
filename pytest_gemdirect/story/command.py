"""The app's own story generator (``--story-command``), run and its story read.

The command is split by the suites' rules (``cmdline.split_command``: no shell, the platform's own
quoting), ``{out}`` is replaced by the path it must write the story to (also ``GEMDIRECT_STORY_OUT``
in its environment), and it runs in the suite folder with its output in a log file, bounded by a
deadline after which its whole process tree is ended. What it wrote is read as ``--story`` reads a
file. Every failure raises :class:`StoryCommandError` naming the command, how it ended and the
last lines of its log. Nothing here imports pytest.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from pytest_gemdirect.cmdline import ProgramNotFound, split_command
from pytest_gemdirect.processes import log_tail, run_with_deadline
from pytest_gemdirect.story.story_file import StoryFile, StoryFileError, load_story_file
from pytest_gemdirect.text import visible

OUT_PLACEHOLDER = "{out}"
LOG_TAIL_LINES = 20


class StoryCommandError(Exception):
    """The generator failed: could not start, exited non-zero, timed out, or wrote no usable story."""


@dataclass(frozen=True)
class GeneratedStory:
    """What the generator wrote, read, and how its run went."""

    story: StoryFile
    command: str
    argv: tuple[str, ...]
    exit_code: int
    duration_s: float
    log_path: Path


def story_command_argv(command: str, out: Path) -> list[str]:
    """The command split into arguments with ``{out}`` replaced; ValueError when it has no ``{out}``."""
    args = split_command(command, what="story_command")
    if not any(OUT_PLACEHOLDER in arg for arg in args):
        raise ValueError(
            f"story_command {command!r} has no {OUT_PLACEHOLDER}: it must say where the generator"
            f" writes the story, e.g. --out {OUT_PLACEHOLDER}"
        )
    return [arg.replace(OUT_PLACEHOLDER, str(out)) for arg in args]


def run_story_command(
    command: str, *, out: Path, cwd: Path, log_path: Path, timeout_s: float, run_dir: Path
) -> GeneratedStory:
    """Run the generator to its end or its deadline, then read the story it wrote at ``out``."""
    argv = story_command_argv(command, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # never read an older file as this run's story
    env = {"GEMDIRECT_RUN_DIR": str(run_dir), "GEMDIRECT_STORY_OUT": str(out)}
    shown = visible(command, limit=300, one_line=True)
    try:
        done = run_with_deadline(argv, cwd=cwd, env_overrides=env, log_path=log_path, timeout_s=timeout_s)
    except OSError as exc:
        reason = str(exc) if isinstance(exc, ProgramNotFound) else f"{type(exc).__name__}: {exc}"
        log_path.write_text(f"could not start {argv!r}: {reason}\n", encoding="utf-8")
        raise StoryCommandError(f"story command {shown} could not start (run in {cwd}): {reason}") from None
    if done.timed_out:
        ended = f"; its process tree was ended (pids {', '.join(map(str, done.ended_pids))})"
        raise StoryCommandError(
            f"story command {shown} timed out after {timeout_s:g} s (--story-command-timeout)"
            f"{ended if done.ended_pids else ''}{_tail(log_path)}"
        )
    if done.exit_code != 0:
        raise StoryCommandError(f"story command {shown} exited {done.exit_code}{_tail(log_path)}")
    if not out.is_file():
        raise StoryCommandError(
            f"story command {shown} exited 0 but wrote no story at {out} (its {OUT_PLACEHOLDER})"
            f"{_tail(log_path)}"
        )
    try:
        story = load_story_file(out)
    except StoryFileError as exc:
        raise StoryCommandError(f"story command {shown} wrote a story that cannot be used: {exc}") from None
    assert done.exit_code is not None
    return GeneratedStory(story, command, tuple(argv), done.exit_code, done.duration_s, log_path)


def _tail(log_path: Path) -> str:
    tail = visible(log_tail(log_path, LOG_TAIL_LINES))
    return f"; its log ({log_path}) ends:\n{textwrap.indent(tail, '  ')}"
