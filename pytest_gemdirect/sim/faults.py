"""Named, injectable faults for the embedded simulators (``NAME`` or ``NAME@scene-002``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

KNOWN_FAULTS: dict[str, str] = {
    "history-never": (
        "sends `executed` for the save node, then nothing; /history stays {} (the 2025-11-11 hang)"
    ),
    "history-late": "stores the history entry some seconds after the completion messages",
    "ws-drop": "closes the WebSocket mid-generation",
    "ws-silent": "accepts the WebSocket and never sends a message on it",
    "stall": "stops mid-generation at step max-1 and never ends",
    "execution-error": "fails every attempt with execution_error as recorded",
    "flaky": "fails the first attempt with execution_error, succeeds on the next",
    "view-404": "lists outputs in history that /view answers with 404",
    "crash": "the simulator process dies mid-generation",
    "missing-model": (
        "the server lacks one model file the workflow names (the first; per scene: that scene's first):"
        " not listed, and a prompt asking for it is refused"
    ),
    "view-trickle": "/view sends file bodies at about 1 KB/s (small chunks, the server stays responsive)",
    "history-huge": "/history entries and /object_info carry about 50 MB of extra junk fields",
    "names-hostile": (
        "SaveImage outputs are listed under hostile names (../, absolute, NUL, CON, aux.png, bidi,"
        " terminal escapes, <script>) that /view serves"
    ),
    "history-garbage": "the first 3 /history/<id> answers are HTTP 200 with a body that is not JSON",
    "frozen": "every frame of the decoded video is the same picture",
    "black-frames": "every fourth decoded frame (1, 5, 9, ...) is nearly all black",
    "short": "the decoded video has half the frames the workflow asks for",
    "wrong-size": "the decoded frames are half the width and height the workflow asks for",
    "llm-down": "the LLM endpoint is unreachable",
    "llm-timeout": "the LLM accepts requests and never answers",
    "llm-garbage": "the LLM answers text that is not the story JSON",
    "llm-reject-json-schema": "the LLM rejects response_format json_schema with HTTP 400",
    "llm-json-object-only": "the LLM accepts only response_format json_object (or none)",
    "llm-control-chars": "the LLM returns JSON with raw control characters inside strings",
    "llm-truncated": "the LLM stops at the token limit with cut-off JSON (finish_reason length)",
    "llm-slow-first": "the LLM's first request is slow (a cold model load)",
    "llm-500": "the LLM answers HTTP 500 to chat completions",
}

_SCENE = re.compile(r"^scene-\d{3}$")


@dataclass(frozen=True)
class Fault:
    name: str
    scene: str | None = None  # None: every scene

    def spec(self) -> str:
        return self.name if self.scene is None else f"{self.name}@{self.scene}"


class FaultPlan:
    """The faults switched on for one run; asked per scene whether a fault applies."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self.faults: tuple[Fault, ...] = tuple(faults)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> FaultPlan:
        """Parse ``NAME`` / ``NAME@scene-NNN`` specs; ValueError lists the known names."""
        faults = []
        for raw in specs:
            spec = raw.strip()
            if not spec:
                continue
            name, _, scene = spec.partition("@")
            if name not in KNOWN_FAULTS:
                known = ", ".join(sorted(KNOWN_FAULTS))
                raise ValueError(f"unknown fault {name!r}; known faults: {known}")
            if scene and not _SCENE.match(scene):
                raise ValueError(f"fault {spec!r}: the scene must look like scene-002")
            faults.append(Fault(name, scene or None))
        return cls(faults)

    def active(self, name: str, scene: str | None = None) -> bool:
        """True when ``name`` is on for every scene or for ``scene``."""
        return any(f.name == name and (f.scene is None or f.scene == scene) for f in self.faults)

    def specs(self) -> list[str]:
        return [f.spec() for f in self.faults]

    def __bool__(self) -> bool:
        return bool(self.faults)
