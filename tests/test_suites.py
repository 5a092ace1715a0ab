"""Stage 7 library: suite specs, JUnit parsing, and real suite runs (vitest and a Python command)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import psutil
import pytest

from pytest_gemdirect.cmdline import split_args
from pytest_gemdirect.suites import (
    PRESETS,
    JUnitError,
    SuiteResult,
    SuiteSpec,
    parse_junit,
    parse_suite_specs,
    run_suite,
    split_command,
)

ROOT = Path(__file__).resolve().parents[1]
VITEST_DIR = ROOT / "fixtures" / "suites" / "vitest"
JUNIT_PY = ROOT / "fixtures" / "suites" / "junit_python" / "junit_suite.py"


def python_suite(name: str, *flags: str) -> SuiteSpec:
    command = " ".join(shlex.quote(part) for part in (sys.executable, str(JUNIT_PY), *flags))
    return SuiteSpec(name, command)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- specs -------------------------------------------------------------------------------


def test_parse_specs_preset_and_name_command() -> None:
    specs = parse_suite_specs(
        ["vitest", "", "  lint = npm run lint  ", "ui=vitest", "py=python -m pytest -q"]
    )
    assert [s.name for s in specs] == ["vitest", "lint", "ui", "py"]
    assert specs[0].command == PRESETS["vitest"]
    assert specs[1].command == "npm run lint"
    assert specs[2].command == PRESETS["vitest"]  # a preset's name as the command runs the preset
    assert specs[3] == SuiteSpec("py", "python -m pytest -q")


def test_vitest_preset_keeps_the_default_reporter_and_writes_junit() -> None:
    argv = parse_suite_specs(["vitest"])[0].argv("/run/suites/vitest.junit.xml")
    assert argv[0] == "npx" and "vitest" in argv and "run" in argv
    assert "--reporter=default" in argv and "--reporter=junit" in argv
    assert "--outputFile.junit=/run/suites/vitest.junit.xml" in argv


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("jest", "neither NAME=COMMAND nor a preset"),
        ("=npm test", "has no name"),
        ("web=", "has no command"),
        ("web =   ", "has no command"),
        ("my suite=npm test", "must be letters"),
        ("../x=npm test", "must be letters"),
        ("web=npm 'test", "cannot be split"),
    ],
)
def test_parse_specs_errors_name_the_value(value: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_suite_specs([value])
    assert repr(value.strip()) in str(info.value)
    assert words in str(info.value)


def test_parse_specs_rejects_a_repeated_name() -> None:
    with pytest.raises(ValueError, match="used twice"):
        parse_suite_specs(["a=echo 1", "a=echo 2"])


def test_split_command_quotes_and_windows_backslashes() -> None:
    assert split_command("node \"my script.js\" --x='a b'", windows=False) == [
        "node",
        "my script.js",
        "--x=a b",
    ]
    assert split_command(r"C:\tools\run.exe --out C:\tmp\a.xml", windows=True) == [
        r"C:\tools\run.exe",
        "--out",
        r"C:\tmp\a.xml",
    ]
    assert split_command(r'"C:\Program Files\node\npx.cmd" vitest', windows=True) == [
        r"C:\Program Files\node\npx.cmd",
        "vitest",
    ]
    with pytest.raises(ValueError):
        split_command("   ")


@pytest.mark.parametrize("windows", [True, False])
def test_split_args_blank_is_no_arguments(windows: bool) -> None:
    assert split_args("  \n ", windows=windows) == []


def test_split_args_keeps_windows_paths_as_typed() -> None:
    # --comfyui-args as typed in PowerShell or cmd.exe (shlex made D:\AI\out "D:AIout")
    typed = '--output-directory D:\\AI\\out --extra-model-paths-config "C:\\Users\\Zoë\\my paths.yaml"'
    assert split_args(typed, windows=True) == [
        "--output-directory",
        "D:\\AI\\out",
        "--extra-model-paths-config",
        "C:\\Users\\Zoë\\my paths.yaml",
    ]
    # CommandLineToArgvW: backslashes only count before a quote
    assert split_args('a\\\\"b c" d\\"e f\\\\\\"g h', windows=True) == ["a\\b c", 'd"e', 'f\\"g', "h"]
    assert split_args('"ab\\"c" "\\\\" d', windows=True) == ['ab"c', "\\", "d"]
    assert split_args("--lowvram --preview-method auto\n--cpu", windows=True) == [
        "--lowvram",
        "--preview-method",
        "auto",
        "--cpu",
    ]
    # the same text by POSIX rules, where the backslash escapes
    assert split_args("--output-directory D:\\AI\\out", windows=False) == ["--output-directory", "D:AIout"]
    assert split_args("--x 'a b' \"c d\"", windows=False) == ["--x", "a b", "c d"]


def test_split_args_unbalanced_quotes_name_the_value_with_advice() -> None:
    typed = '--output-directory "D:\\AI\\out\\"'  # the backslash makes the closing quote literal
    with pytest.raises(ValueError) as info:
        split_args(typed, windows=True, what="--comfyui-args")
    message = str(info.value)
    assert message.startswith(f"--comfyui-args {typed!r} cannot be split: a double quote is not closed")
    assert 'write "D:\\out" or "D:\\out\\\\"' in message
    with pytest.raises(ValueError, match=r"^--comfyui-args .* cannot be split: no closing quotation$"):
        split_args(typed, windows=False, what="--comfyui-args")
    assert split_args('--output-directory "D:\\AI\\out\\\\"', windows=True) == [
        "--output-directory",
        "D:\\AI\\out\\",
    ]


def test_argv_replaces_the_junit_placeholder_inside_arguments() -> None:
    spec = SuiteSpec("x", "tool --junit={junit} {junit}")
    assert spec.argv("/r/x.xml") == ["tool", "--junit=/r/x.xml", "/r/x.xml"]


# --- JUnit -------------------------------------------------------------------------------

VITEST_LIKE = """<?xml version="1.0" encoding="UTF-8" ?>
<testsuites name="vitest tests" tests="4" failures="1" errors="0" time="0.0083">
  <testsuite name="tests/a.test.js" tests="2" failures="0" errors="0" skipped="1" time="0.002">
    <testcase classname="tests/a.test.js" name="a &gt; works" time="0.001"></testcase>
    <testcase classname="tests/a.test.js" name="a &gt; later" time="0"><skipped/></testcase>
  </testsuite>
  <testsuite name="tests/b.test.js" tests="2" failures="1" errors="0" skipped="0" time="0.005">
    <testcase classname="tests/b.test.js" name="b has 25 frames" time="0.004">
      <failure message="expected 24 to be 25 // Object.is equality" type="AssertionError">
AssertionError: expected 24 to be 25 // Object.is equality

- Expected
+ Received

 ❯ tests/b.test.js:8:20
      </failure>
    </testcase>
    <testcase classname="tests/b.test.js" name="b ok" time="0.001"/>
  </testsuite>
</testsuites>
"""


def test_parse_junit_vitest_shape(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_text(VITEST_LIKE, encoding="utf-8")
    totals = parse_junit(path)
    assert (totals.tests, totals.failures, totals.errors, totals.skipped, totals.passed) == (4, 1, 0, 1, 2)
    assert totals.time == pytest.approx(0.0083)
    (case,) = totals.failing_cases
    assert case.name == "b has 25 frames"
    assert case.file == "tests/b.test.js" and case.line == 8
    assert case.message == "expected 24 to be 25 // Object.is equality"
    assert case.body.splitlines()[0] == "AssertionError: expected 24 to be 25 // Object.is equality"
    assert case.kind == "failure"


def test_parse_junit_bare_testsuite_with_error_and_long_body(tmp_path: Path) -> None:
    body = "\n".join(f"line {i}" for i in range(40))
    path = tmp_path / "j.xml"
    path.write_text(
        '<testsuite name="pytest" tests="2" errors="1" time="1.5">'
        '<testcase classname="tests.test_x" name="test_a"/>'
        f'<testcase classname="tests.test_x" name="test_b" file="tests/test_x.py" line="12">'
        f"<error>{body}</error></testcase>"
        "</testsuite>",
        encoding="utf-8",
    )
    totals = parse_junit(path)
    assert (totals.tests, totals.failures, totals.errors, totals.skipped) == (2, 0, 1, 0)
    assert totals.time == 1.5
    (case,) = totals.failing_cases
    assert case.kind == "error" and case.file == "tests/test_x.py" and case.line == 12
    assert case.message == "line 0"  # no message attribute: the body's first line
    assert len(case.body.splitlines()) == 16 and case.body.endswith("(25 more lines)")


def test_parse_junit_counts_from_suite_attributes_when_there_are_no_cases(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_text(
        '<testsuites><testsuite tests="5" failures="1" skipped="2" time="1"/>'
        '<testsuite tests="3" time="2"/></testsuites>',
        encoding="utf-8",
    )
    totals = parse_junit(path)
    assert (totals.tests, totals.failures, totals.skipped, totals.time) == (8, 1, 2, 3.0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("<testsuites><testsuite>", "not well-formed"),
        ("<results/>", "root element is <results>"),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]><testsuites>&a;</testsuites>', "DOCTYPE"),
        ('<?xml version="1.0"?>\n<!DOCTYPE testsuites SYSTEM "file:///etc/passwd"><testsuites/>', "DOCTYPE"),
    ],
)
def test_parse_junit_rejects(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "j.xml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JUnitError, match=words):
        parse_junit(path)


# --- running: a Python JUnit command -----------------------------------------------------


def test_python_suite_passes(tmp_path: Path) -> None:
    result = run_suite(python_suite("py"), cwd=ROOT, run_dir=tmp_path, timeout_s=30)
    assert result.status == "passed", result.failure_message()
    assert result.exit_code == 0
    assert result.totals is not None and (result.totals.tests, result.totals.skipped) == (3, 1)
    assert result.log_path == tmp_path / "suites" / "py.log"
    assert result.junit_path == tmp_path / "suites" / "py.junit.xml"
    log = result.log_path.read_text(encoding="utf-8")
    assert f"run dir {tmp_path}" in log and str(result.junit_path) in log  # env reached the command
    data = json.loads(json.dumps(result.to_dict()))
    assert data["status"] == "passed" and data["message"] is None and data["totals"]["passed"] == 2


def test_python_suite_failure_names_the_case(tmp_path: Path) -> None:
    result = run_suite(python_suite("py", "--fail"), cwd=ROOT, run_dir=tmp_path, timeout_s=30)
    assert result.status == "failed"
    assert result.exit_code == 1
    (case,) = result.failures
    assert case.file == "tests/test_scene.py" and case.line == 3
    message = result.failure_message()
    assert message.startswith("suite 'py' failed: 1 of 4 tests failed")
    assert "tests/test_scene.py:3 › test_scene_has_25_frames" in message
    assert "AssertionError: scene-001 has 24 frames, expected 25" in message
    data = json.loads(json.dumps(result.to_dict()))
    assert data["failures"][0]["name"] == "test_scene_has_25_frames"
    assert data["message"] == message


def test_missing_junit_after_a_non_zero_exit(tmp_path: Path) -> None:
    result = run_suite(python_suite("crash", "--no-junit"), cwd=ROOT, run_dir=tmp_path, timeout_s=30)
    assert result.status == "error" and result.exit_code == 1 and result.totals is None
    message = result.failure_message()
    assert f"suite 'crash' exited 1 and wrote no JUnit file at {result.junit_path}" in message
    assert "RuntimeError: the suite crashed before writing its report" in message  # the log's tail


def test_stale_junit_from_an_earlier_run_is_not_used(tmp_path: Path) -> None:
    run_suite(python_suite("py", "--fail"), cwd=ROOT, run_dir=tmp_path, timeout_s=30)
    result = run_suite(python_suite("py", "--no-junit"), cwd=ROOT, run_dir=tmp_path, timeout_s=30)
    assert result.status == "error" and result.junit_problem == "missing"


def test_malformed_junit(tmp_path: Path) -> None:
    result = run_suite(python_suite("bad", "--malformed"), cwd=ROOT, run_dir=tmp_path, timeout_s=30)
    assert result.status == "error"
    message = result.failure_message()
    assert f"JUnit file {result.junit_path} is malformed: not well-formed XML" in message
    assert "wrote a truncated report" in message


def test_exit_zero_without_junit_passes_without_totals(tmp_path: Path) -> None:
    spec = SuiteSpec("plain", f"{shlex.quote(sys.executable)} -c \"print('fine')\"")
    result = run_suite(spec, cwd=tmp_path, run_dir=tmp_path, timeout_s=30)
    assert result.status == "passed" and result.totals is None
    assert "wrote no JUnit file" in result.failure_message()


def test_non_zero_exit_with_a_clean_junit_fails(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "import os, sys\n"
        'xml = \'<testsuite tests="1"><testcase name="t"/></testsuite>\'\n'
        "open(os.environ['GEMDIRECT_JUNIT'], 'w').write(xml)\n"
        "print('coverage below threshold'); sys.exit(2)\n",
        encoding="utf-8",
    )
    spec = SuiteSpec("cov", f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")
    result = run_suite(spec, cwd=tmp_path, run_dir=tmp_path, timeout_s=30)
    assert result.status == "failed" and result.exit_code == 2
    message = result.failure_message()
    assert "exited 2 although its JUnit file shows no failing case" in message
    assert "coverage below threshold" in message


def test_command_not_found(tmp_path: Path) -> None:
    result = run_suite(
        SuiteSpec("nope", "no-such-tool-gemdirect --x"), cwd=tmp_path, run_dir=tmp_path, timeout_s=5
    )
    assert result.status == "error" and result.exit_code is None
    assert "'no-such-tool-gemdirect' was not found" in result.failure_message()
    assert "on PATH (searched " in result.failure_message()
    json.dumps(result.to_dict())


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX script with its execute bit")
def test_a_relative_program_runs_from_the_suite_folder(tmp_path: Path) -> None:
    suite_dir = tmp_path / "app"
    (suite_dir / "scripts").mkdir(parents=True)
    script = suite_dir / "scripts" / "check"
    script.write_text(f"#!{sys.executable}\nimport os; print('ran in', os.getcwd())\n", encoding="utf-8")
    script.chmod(0o755)
    result = run_suite(SuiteSpec("rel", "scripts/check"), cwd=suite_dir, run_dir=tmp_path, timeout_s=30)
    assert result.status == "passed", result.failure_message()
    assert f"ran in {suite_dir}" in result.log_path.read_text(encoding="utf-8")
    missing = run_suite(SuiteSpec("gone", "scripts/nope"), cwd=suite_dir, run_dir=tmp_path, timeout_s=30)
    assert missing.status == "error"
    assert f"there is no file {suite_dir / 'scripts' / 'nope'}" in missing.failure_message()
    assert f"from the folder it runs in, {suite_dir})" in missing.failure_message()


def test_timeout_ends_the_whole_tree(tmp_path: Path) -> None:
    result = run_suite(python_suite("slow", "--hang"), cwd=ROOT, run_dir=tmp_path, timeout_s=2)
    assert result.status == "timed_out" and result.exit_code is None
    assert result.duration_s >= 2
    child, grandchild = (int(x) for x in (tmp_path / "hang.pid").read_text(encoding="utf-8").split())
    assert {child, grandchild} <= set(result.ended_pids)
    assert _gone(child) and _gone(grandchild)
    message = result.failure_message()
    assert message.startswith("suite 'slow' timed out after 2 s (--suite-timeout)")
    assert "hanging with grandchild" in message  # the log's tail
    assert json.loads(json.dumps(result.to_dict()))["timed_out"] is True


# --- running: the real vitest project -----------------------------------------------------


@pytest.fixture
def vitest_project(vitest_dir: Path) -> Path:
    """The sample vitest project, installed once by the session fixture in conftest.py."""
    return vitest_dir


def test_vitest_passes_with_a_skip(
    vitest_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMDIRECT_VITEST_FAIL", raising=False)
    (spec,) = parse_suite_specs(["vitest"])
    result = run_suite(spec, cwd=vitest_project, run_dir=tmp_path, timeout_s=60)
    assert result.status == "passed", result.failure_message()
    assert result.totals is not None
    assert (result.totals.tests, result.totals.passed, result.totals.skipped) == (4, 3, 1)
    log = result.log_path.read_text(encoding="utf-8")
    assert "Tests" in log and "passed" in log  # the default reporter went to the log


def test_vitest_failure_names_file_case_and_assertion(
    vitest_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMDIRECT_VITEST_FAIL", "1")
    (spec,) = parse_suite_specs(["vitest"])
    result = run_suite(spec, cwd=vitest_project, run_dir=tmp_path, timeout_s=60)
    assert result.status == "failed", result.failure_message()
    assert result.exit_code == 1
    assert result.totals is not None
    assert (result.totals.tests, result.totals.failures, result.totals.skipped) == (5, 1, 1)
    message = result.failure_message()
    assert "suite 'vitest' failed: 1 of 5 tests failed" in message
    assert "tests/scene.test.js:8 › scene-001 has 25 frames" in message
    assert "expected 24 to be 25" in message
    assert isinstance(result, SuiteResult)
