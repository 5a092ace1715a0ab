"""Stage 7, external suites: run the app's own test commands and fold their JUnit results in.

A suite is ``NAME=COMMAND`` (or a preset name alone, e.g. ``vitest``). The command runs without a
shell, split by the platform's rules (``cmdline.split_command``: POSIX shell rules, or Windows'
``CommandLineToArgvW`` rules where ``C:\\tools\\x.exe`` stays as written), in the suite folder
(a relative program path is taken from there, on every platform), with the run directory in its
environment (``GEMDIRECT_RUN_DIR``) and the JUnit XML file it should write (``GEMDIRECT_JUNIT``, also the
``{junit}`` placeholder); its output goes to ``suites/NAME.log`` in the run directory and it is
bounded by the suite timeout, after which its whole process tree is ended. The JUnit file is
parsed into totals and failing cases, which the failure message, the summary and the report show.

This module imports nothing from pytest; the plugin turns each ``SuiteResult`` into a test node.
"""

from __future__ import annotations

import re
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.parsers import expat

from pytest_gemdirect.cmdline import ProgramNotFound, split_command
from pytest_gemdirect.processes import log_tail, run_with_deadline, strip_ansi

JUNIT_PLACEHOLDER = "{junit}"

# ``npx --no``: run the project's own vitest, never download one (a missing install fails at once
# with "npx canceled due to missing packages" in the log). ``--reporter=default`` is named because
# vitest picks other reporters by itself in CI and agent environments, and naming any reporter
# replaces its defaults; ``--outputFile.junit`` sends only the JUnit reporter's output to the file.
PRESETS: dict[str, str] = {
    "vitest": "npx --no vitest run --reporter=default --reporter=junit --outputFile.junit={junit}",
}

# The app's (gemDirect1) own three suites, run as its runner runs them: vitest's entry script under
# node, the vmThreads pool, one path each; the JUnit reporter is added so the harness reads totals.
_APP_VITEST = "node node_modules/vitest/vitest.mjs run --pool=vmThreads {path}"
_APP_REPORTERS = " --reporter=default --reporter=junit --outputFile.junit={junit}"
GROUP_PRESETS: dict[str, tuple[tuple[str, str], ...]] = {
    "gemdirect": tuple(
        (name, _APP_VITEST.format(path=path) + _APP_REPORTERS)
        for name, path in (
            ("comfyUI", "services/comfyUIService.test.ts"),
            ("e2e", "services/e2e.test.ts"),
            ("scripts", "scripts/__tests__"),
        )
    ),
}
"""Presets that stand for several suites (``--suite gemdirect``)."""

NODE_NEEDED: dict[str, tuple[int, int]] = {"gemdirect": (22, 19)}
"""The Node version a group preset's suites need (the app's engines field), checked at start-up."""

SUITE_STATUSES = ("passed", "failed", "timed_out", "error")
BODY_LINES = 15
SHOWN_CASES = 10  # failing cases spelled out in a failure message
KEPT_CASES = 50  # failing cases kept in to_dict()
LOG_TAIL_LINES = 30

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PATHLIKE_RE = re.compile(r"[\\/]|\.(?:[cm]?[jt]sx?|py|vue|svelte|rb|go|rs|java|kt|cs)$", re.IGNORECASE)
_LOCATION_RE = re.compile(r"([\w.@+\-\\/:]*?[\w.@+\-]+\.[A-Za-z]{1,6}):(\d+)(?::\d+)?")


# --- specs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteSpec:
    """One configured suite: a name (a file-name-safe word) and the command line to run."""

    name: str
    command: str
    preset: str | None = None  # the group preset it came from (``gemdirect``), if any

    def argv(self, junit: Path | str | None = None) -> list[str]:
        """The command split into arguments, ``{junit}`` replaced when a path is given."""
        args = split_command(self.command)
        if junit is not None:
            args = [arg.replace(JUNIT_PLACEHOLDER, str(junit)) for arg in args]
        return args


def parse_suite_specs(values: list[str] | tuple[str, ...]) -> list[SuiteSpec]:
    """``NAME=COMMAND`` values (or a preset name alone, e.g. ``vitest``) as suite specs.

    Blank values are ignored (ini lines). ``NAME = COMMAND`` with spaces is accepted. A command
    that is exactly a preset's name runs that preset under NAME. Raises ValueError naming the
    offending value: no ``=`` and no preset, a bad or repeated name, an empty command, or an
    unbalanced quote.
    """
    specs: list[SuiteSpec] = []
    seen: set[str] = set()
    presets = ", ".join(repr(name) for name in [*PRESETS, *GROUP_PRESETS])
    for raw in values:
        value = str(raw).strip()
        if not value:
            continue
        if value in GROUP_PRESETS:
            for name, command in GROUP_PRESETS[value]:
                if name in seen:
                    raise ValueError(f"suite {value!r}: the name {name!r} is used twice")
                seen.add(name)
                specs.append(SuiteSpec(name, command, preset=value))
            continue
        if "=" not in value:
            if value in PRESETS:
                name, command = value, PRESETS[value]
            else:
                raise ValueError(
                    f"suite {value!r} is neither NAME=COMMAND nor a preset ({presets});"
                    f" write it as e.g. 'web=npx vitest run'"
                )
        else:
            name, _, command = value.partition("=")
            name, command = name.strip(), command.strip()
            if not name:
                raise ValueError(f"suite {value!r} has no name before '=' (NAME=COMMAND)")
            if not command:
                raise ValueError(f"suite {value!r} has no command after '=' (NAME=COMMAND)")
            if command in PRESETS:
                command = PRESETS[command]
        if not _NAME_RE.match(name):
            raise ValueError(
                f"suite {value!r}: the name {name!r} must be letters, digits, '_', '-' or '.'"
                " (it names the test node and the log file)"
            )
        if name in seen:
            raise ValueError(f"suite {value!r}: the name {name!r} is used twice")
        split_command(command, what=f"suite {value!r}: the command")  # ValueError naming both
        seen.add(name)
        specs.append(SuiteSpec(name, command))
    return specs


# --- JUnit -------------------------------------------------------------------------------


class JUnitError(ValueError):
    """A JUnit XML file that cannot be read as one (the message says why)."""


@dataclass(frozen=True)
class FailedCase:
    """One failing (or erroring) test case from a JUnit file."""

    name: str
    classname: str | None
    file: str | None
    line: int | None
    message: str
    body: str  # the first BODY_LINES lines of the failure text
    kind: str = "failure"  # "failure" | "error"

    @property
    def location(self) -> str | None:
        if not self.file:
            return None
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classname": self.classname,
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "body": self.body,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class JUnitTotals:
    """What a JUnit file says: counts, time, and each failing case."""

    tests: int
    failures: int
    errors: int
    skipped: int
    time: float | None
    failing_cases: tuple[FailedCase, ...] = field(default=())

    @property
    def passed(self) -> int:
        return max(0, self.tests - self.failures - self.errors - self.skipped)

    def words(self) -> str:
        parts = [f"{self.passed} passed"]
        if self.failures:
            parts.append(f"{self.failures} failed")
        if self.errors:
            parts.append(f"{self.errors} errors")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return f"{', '.join(parts)} ({self.tests} tests)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tests": self.tests,
            "passed": self.passed,
            "failures": self.failures,
            "errors": self.errors,
            "skipped": self.skipped,
            "time_s": self.time,
        }


def _int_attr(element: ET.Element, name: str) -> int:
    try:
        return int(float(element.get(name, "0") or 0))
    except ValueError:
        return 0


def _float_attr(element: ET.Element, name: str) -> float | None:
    value = element.get(name)
    if value is None or not value.strip():
        return None
    try:
        return float(value.replace(",", ""))
    except ValueError:
        return None


def _first_lines(text: str, count: int = BODY_LINES) -> str:
    lines = textwrap.dedent(strip_ansi(text).replace("\r\n", "\n")).strip("\n").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    shown = [line.rstrip() for line in lines[:count]]
    if len(lines) > count:
        shown.append(f"… ({len(lines) - count} more lines)")
    return "\n".join(shown)


def _failed_case(case: ET.Element, outcome: ET.Element, suite_file: str | None) -> FailedCase:
    name = case.get("name") or "(unnamed case)"
    classname = case.get("classname") or None
    body_text = outcome.text or ""
    body = _first_lines(body_text)
    message = (outcome.get("message") or "").strip()
    if not message:
        message = next((line.strip() for line in body.splitlines() if line.strip()), "")
    if not message:
        message = outcome.get("type") or outcome.tag
    message = strip_ansi(message)
    file = case.get("file") or suite_file
    if not file and classname and _PATHLIKE_RE.search(classname):
        file = classname
    line: int | None = None
    if case.get("line", "").isdigit():
        line = int(case.get("line", "0"))
    for match in _LOCATION_RE.finditer(strip_ansi(body_text)):
        found_file, found_line = match.group(1), int(match.group(2))
        if file is None:
            file, line = found_file, found_line
            break
        norm = file.replace("\\", "/")
        if found_file.replace("\\", "/").endswith(norm) or norm.endswith(found_file.replace("\\", "/")):
            line = line or found_line
            break
    return FailedCase(
        name=name,
        classname=classname,
        file=file,
        line=line,
        message=message,
        body=body,
        kind="error" if outcome.tag == "error" else "failure",
    )


class _Refused(Exception):
    pass


def _refuse_doctype(data: bytes) -> None:
    """Raise JUnitError when the document declares a DOCTYPE or entities (defusedxml's caution,
    with the standard library's expat): a JUnit file never needs one, and entities can blow up."""

    def refuse(*_args: Any) -> None:
        raise _Refused

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
    except _Refused:
        raise JUnitError(
            "it declares a DOCTYPE or entities, which a JUnit file never needs; refusing to parse it"
        ) from None
    except expat.ExpatError as exc:
        raise JUnitError(f"not well-formed XML ({exc})") from None


def parse_junit(path: str | Path) -> JUnitTotals:
    """Read a JUnit XML file (``<testsuites>`` or a bare ``<testsuite>``, nested suites too).

    Counts come from the test cases when there are any (producers disagree on the suite-level
    attributes; vitest leaves ``skipped`` off ``<testsuites>``), else from the suites' attributes.
    A file with a DOCTYPE or entity declaration is refused. Raises JUnitError with the reason
    for anything that is not a readable JUnit file, FileNotFoundError when there is no file.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():
        raise JUnitError("the file is empty")
    _refuse_doctype(data)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise JUnitError(f"not well-formed XML ({exc})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise JUnitError(f"the root element is <{root.tag}>, not <testsuites> or <testsuite>")

    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    cases: list[tuple[ET.Element, str | None]] = []

    def walk(element: ET.Element, suite_file: str | None) -> None:
        for child in element:
            if child.tag == "testsuite":
                walk(child, child.get("file") or suite_file)
            elif child.tag == "testcase":
                cases.append((child, suite_file))

    walk(root, root.get("file"))

    failing: list[FailedCase] = []
    if cases:
        tests = len(cases)
        failures = errors = skipped = 0
        for case, suite_file in cases:
            failure = case.find("failure")
            error = case.find("error")
            if failure is not None:
                failures += 1
                failing.append(_failed_case(case, failure, suite_file))
            elif error is not None:
                errors += 1
                failing.append(_failed_case(case, error, suite_file))
            elif case.find("skipped") is not None:
                skipped += 1
    else:
        leaves = [s for s in suites if s.find("testsuite") is None] or [root]
        tests = sum(_int_attr(s, "tests") for s in leaves)
        failures = sum(_int_attr(s, "failures") for s in leaves)
        errors = sum(_int_attr(s, "errors") for s in leaves)
        skipped = sum(_int_attr(s, "skipped") + _int_attr(s, "disabled") for s in leaves)

    total_time = _float_attr(root, "time")
    if total_time is None:
        top = [s for s in root if s.tag == "testsuite"] if root.tag == "testsuites" else []
        times = [t for t in (_float_attr(s, "time") for s in top) if t is not None]
        if not times:
            times = [t for t in (_float_attr(c, "time") for c, _ in cases) if t is not None]
        total_time = round(sum(times), 6) if times else None
    return JUnitTotals(tests, failures, errors, skipped, total_time, tuple(failing))


# --- running -----------------------------------------------------------------------------


@dataclass
class SuiteResult:
    """The outcome of one suite run; ``failure_message()`` says it in plain words."""

    name: str
    command: str
    argv: list[str]
    status: str  # passed | failed | timed_out | error
    exit_code: int | None
    duration_s: float
    log_path: Path
    junit_path: Path
    timeout_s: float
    totals: JUnitTotals | None = None
    junit_problem: str | None = None  # "missing" | "malformed: …" | None
    start_error: str | None = None
    ended_pids: tuple[int, ...] = ()
    cwd: Path | None = None
    started_at: str | None = None  # local time with offset, as the summary's times

    @property
    def failures(self) -> tuple[FailedCase, ...]:
        return self.totals.failing_cases if self.totals else ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def _tail(self) -> str:
        tail = log_tail(self.log_path, LOG_TAIL_LINES)
        return f"its log ({self.log_path}) ends:\n{textwrap.indent(tail, '  ')}"

    def describe(self) -> str:
        """One line: the suite, its status and its totals."""
        totals = f": {self.totals.words()}" if self.totals else ""
        if self.status == "passed":
            return f"suite {self.name!r} passed{totals} in {self.duration_s:.1f} s"
        if self.status == "timed_out":
            return f"suite {self.name!r} timed out after {self.timeout_s:g} s (--suite-timeout)"
        if self.status == "error" and self.start_error:
            return f"suite {self.name!r} could not start: {self.start_error}"
        code = f"exited {self.exit_code}"
        return f"suite {self.name!r} {self.status} ({code}){totals}"

    def failure_message(self) -> str:
        """Plain words for the test's failure, the summary and the report.

        Which suite, then: the failing cases with file, name and assertion message; or that it
        exited with no JUnit file / a malformed one, with its log's tail; or that it timed out.
        """
        if self.status == "passed":
            note = ""
            if self.totals is None:
                note = f" (it wrote no JUnit file at {self.junit_path}, so there are no totals)"
            return self.describe() + note
        if self.status == "timed_out":
            ended = f"; its process tree was ended (pids {', '.join(map(str, self.ended_pids))})"
            return (
                f"suite {self.name!r} timed out after {self.timeout_s:g} s (--suite-timeout)"
                f"{ended if self.ended_pids else ''}; command: {self.command}\n{self._tail()}"
            )
        if self.start_error:
            return (
                f"suite {self.name!r} could not start: {self.start_error}\n"
                f"command: {self.command} (run in {self.cwd})"
            )
        if self.junit_problem == "missing":
            return (
                f"suite {self.name!r} exited {self.exit_code} and wrote no JUnit file at {self.junit_path}"
                f"; command: {self.command}\n{self._tail()}"
            )
        if self.junit_problem:
            return (
                f"suite {self.name!r} exited {self.exit_code}; JUnit file {self.junit_path} is malformed:"
                f" {self.junit_problem}\n{self._tail()}"
            )
        totals = self.totals
        assert totals is not None
        failing = totals.failing_cases
        if not failing and totals.failures + totals.errors:
            return (
                f"suite {self.name!r} failed: its JUnit file counts {totals.failures + totals.errors} failing"
                f" tests but lists no failing case ({totals.words()}; exit code {self.exit_code})"
                f"\nJUnit: {self.junit_path}\n{self._tail()}"
            )
        if not failing:
            return (
                f"suite {self.name!r} exited {self.exit_code} although its JUnit file shows no failing case"
                f" ({totals.words()})\n{self._tail()}"
            )
        others = [f"{totals.passed} passed"] + ([f"{totals.skipped} skipped"] if totals.skipped else [])
        lines = [
            f"suite {self.name!r} failed: {totals.failures + totals.errors} of {totals.tests} tests failed"
            f" ({', '.join(others)}; exit code {self.exit_code})"
        ]
        for case in failing[:SHOWN_CASES]:
            where = f"{case.location} › " if case.location else ""
            label = "error in" if case.kind == "error" else "FAILED"
            body = case.body.splitlines()
            headline = case.message
            if body and case.message and case.message in body[0]:
                headline, body = body[0].strip(), body[1:]  # e.g. "AssertionError: <message>"
            while body and not body[0].strip():
                body.pop(0)
            lines.append(f"  {label} {where}{case.name}")
            lines.append(f"    {headline}")
            if body:
                lines.append(textwrap.indent("\n".join(body), "      "))
        if len(failing) > SHOWN_CASES:
            lines.append(f"  … and {len(failing) - SHOWN_CASES} more failing cases (see {self.junit_path})")
        lines.append(f"log: {self.log_path}")
        lines.append(f"JUnit: {self.junit_path}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable, for the run summary's ``suites`` section."""
        failing = self.failures
        return {
            "name": self.name,
            "command": self.command,
            "argv": list(self.argv),
            "cwd": str(self.cwd) if self.cwd else None,
            "status": self.status,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "started_at": self.started_at,
            "timeout_s": self.timeout_s,
            "timed_out": self.status == "timed_out",
            "totals": self.totals.to_dict() if self.totals else None,
            "failures": [case.to_dict() for case in failing[:KEPT_CASES]],
            "failures_total": len(failing),
            "junit_problem": self.junit_problem,
            "start_error": self.start_error,
            "ended_pids": list(self.ended_pids),
            "log": str(self.log_path),
            "junit": str(self.junit_path) if self.junit_path.exists() else None,
            "message": None if self.passed else self.failure_message(),
        }


def suite_paths(name: str, run_dir: Path) -> tuple[Path, Path]:
    """(log, junit) paths of suite ``name`` inside the run directory."""
    folder = Path(run_dir) / "suites"
    return folder / f"{name}.log", folder / f"{name}.junit.xml"


def run_suite(spec: SuiteSpec, *, cwd: Path, run_dir: Path, timeout_s: float) -> SuiteResult:
    """Run one suite to its end or its timeout and judge it from its exit code and JUnit file.

    passed: exit 0 and no failing case (a suite that writes no JUnit file passes on exit 0 alone);
    failed: failing cases in the JUnit file, or a non-zero exit with a valid one; timed_out: ended
    with its process tree at ``timeout_s``; error: could not start, or exited non-zero with no
    JUnit file, or wrote a malformed one.
    """
    run_dir = Path(run_dir)
    log_path, junit_path = suite_paths(spec.name, run_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    junit_path.unlink(missing_ok=True)  # never judge a run by an older file
    argv = spec.argv(junit_path)
    env = {
        "GEMDIRECT_RUN_DIR": str(run_dir),
        "GEMDIRECT_JUNIT": str(junit_path),
        "GEMDIRECT_SUITE": spec.name,
    }
    base: dict[str, Any] = dict(
        name=spec.name,
        command=spec.command,
        argv=argv,
        log_path=log_path,
        junit_path=junit_path,
        timeout_s=timeout_s,
        cwd=Path(cwd),
        started_at=datetime.now().astimezone().isoformat(timespec="milliseconds"),
    )
    try:
        run = run_with_deadline(argv, cwd=cwd, env_overrides=env, log_path=log_path, timeout_s=timeout_s)
    except OSError as exc:
        reason = str(exc) if isinstance(exc, ProgramNotFound) else f"{type(exc).__name__}: {exc}"
        log_path.write_text(f"could not start {argv!r}: {reason}\n", encoding="utf-8")
        return SuiteResult(status="error", exit_code=None, duration_s=0.0, start_error=reason, **base)

    totals: JUnitTotals | None = None
    problem: str | None = None
    if junit_path.exists():
        try:
            totals = parse_junit(junit_path)
        except (JUnitError, OSError) as exc:
            problem = str(exc)
    elif not run.timed_out:
        problem = "missing"

    if run.timed_out:
        status = "timed_out"
        problem = None if totals is not None else problem
    elif problem == "missing":
        status = "passed" if run.exit_code == 0 else "error"
        problem = None if run.exit_code == 0 else problem
    elif problem:
        status = "error"
    else:
        assert totals is not None
        clean = not totals.failing_cases and totals.failures + totals.errors == 0
        status = "passed" if run.exit_code == 0 and clean else "failed"
    return SuiteResult(
        status=status,
        exit_code=run.exit_code,
        duration_s=run.duration_s,
        totals=totals,
        junit_problem=problem,
        ended_pids=run.ended_pids if run.timed_out else (),
        **base,
    )
