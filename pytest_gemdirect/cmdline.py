"""Command lines by the rules of the platform they run on: split, find the program, quote for cmd.exe.

Users type command lines in settings (``--comfyui-args``, the suite commands) the way their own
shell wants them: ``D:\\AI\\out`` on Windows, ``'a b'`` on POSIX. One splitter reads them with
the right rules (``split_args``): POSIX shell rules (shlex, no shell run) on POSIX, and on Windows
the rules every program's C runtime applies to its command line (``CommandLineToArgvW``), where a
backslash is an ordinary character unless it comes before a double quote.

``resolve_program`` finds the program to start the way the user means it, explicitly, instead of
leaving it to the operating system (Windows looks a relative path up from the *parent's* folder,
and ``shutil.which("npm")`` may pick the extensionless shell shim npm installs next to
``npm.cmd``). ``cmd_exe_command_line`` builds the command line for a ``.cmd``/``.bat`` program,
which Windows runs through cmd.exe, where an unquoted ``&`` or ``%`` would cut or change it.

Everything here is pure (no process is started), so both platforms' rules are tested anywhere.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

# What CreateProcess can start, in PATHEXT's default order (.vbs, .js and the like need a host).
_RUNNABLE_EXTENSIONS = (".com", ".exe", ".bat", ".cmd")
_DEFAULT_PATHEXT = ".COM;.EXE;.BAT;.CMD"
_BATCH_EXTENSIONS = (".bat", ".cmd")
# Characters that cmd.exe leaves alone outside quotes (Rust's std uses the same list since
# CVE-2024-24576); anything else in an argument makes it quoted.
_CMD_SAFE = frozenset("#$*+-./:?@\\_")


class ProgramNotFound(FileNotFoundError):
    """The program of a command line does not exist where it was looked for (the message says where)."""


# --- splitting ---------------------------------------------------------------------------


def split_args(text: str, *, windows: bool | None = None, what: str = "the command line") -> list[str]:
    """``text`` split into arguments by the platform's rules, without running a shell.

    ``windows`` None means this machine's platform. POSIX: shell rules (quotes group and are
    removed, a backslash escapes). Windows: ``CommandLineToArgvW`` rules (quotes group and are
    removed; backslashes are literal except ``2n`` of them before a ``"``, which give ``n`` and a
    quote that groups, and ``2n+1``, which give ``n`` and a literal ``"``; ``""`` inside quotes is
    a literal quote), so ``D:\\AI\\out`` stays as written; line breaks separate arguments too
    (ini files). A blank text gives ``[]``. Raises ValueError naming ``what`` and the value for an
    unbalanced quote.
    """
    windows = sys.platform == "win32" if windows is None else windows
    if windows:
        args, unbalanced = _split_windows(text)
        if unbalanced:
            hint = ""
            if '\\"' in text:
                hint = (
                    '; on Windows a backslash right before a quote makes that quote literal: write "D:\\out"'
                    ' or "D:\\out\\\\" rather than "D:\\out\\"'
                )
            raise ValueError(f"{what} {text!r} cannot be split: a double quote is not closed{hint}")
        return args
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        reason = str(exc).lower()
        raise ValueError(f"{what} {text!r} cannot be split: {reason}") from None


def split_command(command: str, *, windows: bool | None = None, what: str = "the command") -> list[str]:
    """``split_args`` for a command: a program and its arguments; ValueError when empty."""
    args = split_args(command, windows=windows, what=what)
    if not args:
        raise ValueError(f"{what} is empty")
    return args


def _split_windows(text: str) -> tuple[list[str], bool]:
    """(arguments, a quote left open), as Wine implements ``CommandLineToArgvW``."""
    args: list[str] = []
    current: list[str] = []
    in_arg = False
    quotes = 0  # 0: outside quotes, 1: inside
    backslashes = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n" and quotes == 0:
            if in_arg:
                args.append("".join(current) + "\\" * backslashes)
            current, in_arg, backslashes = [], False, 0
            i += 1
            continue
        in_arg = True
        if ch == "\\":
            backslashes += 1
            i += 1
            continue
        if ch != '"':
            current.append("\\" * backslashes + ch)
            backslashes = 0
            i += 1
            continue
        current.append("\\" * (backslashes // 2))
        if backslashes % 2:
            current.append('"')  # an escaped quote
        else:
            quotes += 1
        backslashes = 0
        i += 1
        while i < n and text[i] == '"':  # a run of quotes: every third one is literal
            quotes += 1
            if quotes == 3:
                current.append('"')
                quotes = 0
            i += 1
        if quotes == 2:
            quotes = 0
    if in_arg:
        args.append("".join(current) + "\\" * backslashes)
    return args, quotes != 0


# --- finding the program -----------------------------------------------------------------


def resolve_program(
    name: str,
    *,
    cwd: str | os.PathLike[str] | None,
    platform: str = sys.platform,
    path: str | None = None,
    pathext: str | None = None,
) -> Path:
    """The file to start for ``name``, the program of a command line run in ``cwd``.

    ``~`` is expanded (``~\\`` too on Windows). A name with a folder in it is taken from ``cwd``
    when relative (the child's folder, on every platform; None means this process's). A bare name
    is looked up on ``path`` (default: PATH), and on Windows in ``cwd`` first, as cmd.exe does.
    On Windows a name without one of the ``pathext`` extensions (default: PATHEXT, limited to what
    CreateProcess can start: .com .exe .bat .cmd) gets them in that order, so ``npm`` is
    ``npm.cmd`` and never the extensionless shell script beside it. Raises ProgramNotFound
    naming the folders searched.
    """
    windows = platform == "win32"
    if not name.strip():
        raise ProgramNotFound("no program was given (the command is empty)")
    base = Path(cwd) if cwd is not None else Path.cwd()
    extensions = _extensions(pathext if pathext is not None else os.environ.get("PATHEXT"))
    text = name
    if windows and text.startswith("~\\"):
        text = "~/" + text[2:]
    text = os.path.expanduser(text)
    if windows and os.sep == "/":
        text = text.replace("\\", "/")  # Windows rules checked on a POSIX machine (the tests)
    has_folder = "/" in text or os.sep in text or (windows and len(text) > 1 and text[1] == ":")
    if has_folder:
        candidate = Path(text)
        relative = not candidate.is_absolute()
        if relative:
            candidate = base / candidate
        for found in _variants(candidate, windows, extensions):
            if found.is_file():
                return found
        tried = _tried(candidate, windows, extensions)
        where = f" (a relative path is taken from the folder it runs in, {base})" if relative else ""
        raise ProgramNotFound(f"{name!r} was not found: there is no file {tried}{where}")
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    separator = ";" if windows else os.pathsep
    folders = [Path(p.strip().strip('"')) for p in search.split(separator) if p.strip().strip('"')]
    if windows:
        folders.insert(0, base)
    for folder in folders:
        for found in _variants(folder / text, windows, extensions):
            if found.is_file() and (windows or os.access(found, os.X_OK)):
                return found
    where = f"in {base} nor " if windows else ""
    shown = "; ".join(str(f) for f in folders[1 if windows else 0 :][:8])
    more = f" and {len(folders) - 8} more" if len(folders) > 8 else ""
    raise ProgramNotFound(
        f"{name!r} was not found {where}on PATH (searched {shown or 'no folder: PATH is empty'}{more})"
        + (f"; extensions tried: {', '.join(extensions)}" if windows else "")
    )


def _extensions(pathext: str | None) -> list[str]:
    listed = [e.strip().lower() for e in (pathext or _DEFAULT_PATHEXT).split(";") if e.strip()]
    runnable = [e for e in listed if e in _RUNNABLE_EXTENSIONS]
    return runnable or list(_RUNNABLE_EXTENSIONS)


def _variants(candidate: Path, windows: bool, extensions: list[str]) -> list[Path]:
    if not windows or candidate.suffix.lower() in extensions:
        return [candidate]
    return [candidate.with_name(candidate.name + ext) for ext in extensions]


def _tried(candidate: Path, windows: bool, extensions: list[str]) -> str:
    if not windows or candidate.suffix.lower() in extensions:
        return str(candidate)
    return f"{candidate} with any of {', '.join(extensions)}"


def is_batch_file(program: str | os.PathLike[str], *, platform: str = sys.platform) -> bool:
    """True for a ``.bat``/``.cmd`` program on Windows, which runs through cmd.exe."""
    return platform == "win32" and Path(program).suffix.lower() in _BATCH_EXTENSIONS


# --- quoting for cmd.exe -----------------------------------------------------------------


def quote_cmd_arg(arg: str) -> str:
    """One argument for a ``.cmd``/``.bat`` program's command line, reaching it unchanged.

    Quoted when it holds anything but letters, digits and ``#$*+-./:?@\\_`` (or is empty or ends
    with a backslash): inside double quotes cmd.exe leaves ``& | < > ^ ( )`` alone (a caret there
    would be passed on as a caret, so none is added). A ``"`` is doubled, with the backslashes
    before it doubled (C runtime rules, for the program the script runs). A ``%`` becomes
    ``%%cd:~,%``: cmd.exe expands ``%NAME%`` even inside quotes, and ``%%`` is only an escape in a
    batch file, not on the ``cmd /c`` line; ``%cd:~,%`` is an empty substring of a variable that
    always exists, so the pair reads as one literal ``%``. Raises ValueError for a line break,
    which cmd.exe would cut the command at.
    """
    if "\n" in arg or "\r" in arg:
        raise ValueError(f"the argument {arg!r} has a line break, which cmd.exe cannot pass to a batch file")
    quote = not arg or arg.endswith("\\")
    quote = quote or any(
        (ch.isascii() and not (ch.isalnum() or ch in _CMD_SAFE)) or not ch.isprintable() for ch in arg
    )
    out: list[str] = []
    backslashes = 0
    for ch in arg:
        if ch == "\\":
            backslashes += 1
            out.append(ch)
            continue
        if ch == '"':
            out.append("\\" * backslashes + '"')  # 2n backslashes and "" before an inner quote
        elif ch == "%":
            out.append("%%cd:~,")
        backslashes = 0
        out.append(ch)
    if quote:
        return '"' + "".join(out) + "\\" * backslashes + '"'
    return "".join(out)


def cmd_exe_command_line(script: str, args: Sequence[str], *, comspec: str = "cmd.exe") -> str:
    """The whole command line that runs the batch file ``script`` with ``args`` through cmd.exe.

    ``"<comspec>" /d /e:ON /v:OFF /c ""<script>" <quoted args>"``: /d skips AutoRun commands,
    /e:ON keeps the ``%cd:~,%`` substring trick working, /v:OFF keeps ``!`` literal, and the outer
    pair of quotes is the one cmd.exe strips after /c. Raises ValueError for a script path with a
    ``"`` or a trailing backslash (no Windows file name has one) or an argument with a line break.
    """
    if '"' in script or script.endswith("\\"):
        raise ValueError(f"{script!r} is not a file name Windows allows")
    quoted = " ".join(quote_cmd_arg(str(arg)) for arg in args)
    tail = f" {quoted}" if args else ""
    return f'"{comspec}" /d /e:ON /v:OFF /c ""{script}"{tail}"'


__all__ = [
    "ProgramNotFound",
    "cmd_exe_command_line",
    "is_batch_file",
    "quote_cmd_arg",
    "resolve_program",
    "split_args",
    "split_command",
]
