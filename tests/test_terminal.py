"""The progress display, driven with an injected clock: what a person sees while SVD runs."""

from __future__ import annotations

from pytest_gemdirect.pytest_plugin.terminal import ProgressDisplay


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_a_bar_on_a_line_of_its_own_cleared_when_the_scene_ends() -> None:
    written: list[str] = []
    clock = Clock()
    show = ProgressDisplay(written.append, in_place=True, clock=clock)
    show("scene-001", 1, 20)
    clock.now += 12.0
    show("scene-001", 5, 20)
    assert written[0] == "\n"  # below pytest's own progress line
    line = written[-1]
    assert line.startswith("\rscene-001 [######------------------] step 5/20, 0:12 elapsed")
    assert "~0:45 left" in line and "3.00 s/step" in line  # 4 steps in 12 s, 15 to go
    clock.now += 30.0
    show.node("scene-001", "VAEDecode (node 8)")
    assert "running VAEDecode (node 8)" in written[-1] and "0:42 elapsed" in written[-1]
    show.done("scene-001")
    assert written[-1].strip() == "" and written[-1].startswith("\r") and written[-1].endswith("\r")
    assert all("\n" not in text for text in written[1:])  # redrawn in place, never scrolled


def test_off_a_terminal_a_plain_line_every_ten_seconds_of_a_long_scene() -> None:
    written: list[str] = []
    clock = Clock()
    show = ProgressDisplay(written.append, in_place=False, clock=clock)
    for step in range(1, 31):
        show("scene-002", step, 30)
        clock.now += 1.0
    show.done("scene-002")
    assert all(text.startswith("\n") and text.endswith("\n") and "\r" not in text for text in written)
    # one line 10 s in and one 20 s in: not one line a step, and no line to clear
    assert [text.strip().split(",")[0] for text in written] == [
        "scene-002 [########----------------] step 11/30",
        "scene-002 [################--------] step 21/30",
    ]


def test_off_a_terminal_a_short_scene_adds_nothing_to_the_log() -> None:
    written: list[str] = []
    clock = Clock()
    show = ProgressDisplay(written.append, in_place=False, clock=clock)
    for step in range(1, 21):
        show("scene-001", step, 20)
        clock.now += 0.2
    show.done("scene-001")
    assert written == []


def test_node_names_from_a_server_cannot_drive_the_terminal() -> None:
    written: list[str] = []
    show = ProgressDisplay(written.append, in_place=True, clock=Clock())
    show.node("scene-001", "Evil\x1b]0;pwned\x07 (node 9)")
    assert "\x1b" not in "".join(written) and "\\x1b]0;pwned\\x07" in written[-1]
