"""An embedded ComfyUI simulator that speaks the real 0.3.64 HTTP + WebSocket protocol.

It is data-driven from the full ``/object_info`` recorded from a real ComfyUI 0.3.64 (``catalog``):
every one of its 478 classes validates as the real server validates it and runs, a few by an
implementation of their own, the rest by their output types (``behaviours``); a class the real
server lacks (a custom node) is refused as the real server refuses it. It draws real pictures
(Pillow), writes real output files (PNG, WebP, APNG, MP4, WebM), and sends the WebSocket messages
in the order the recorded real server does (see ``shared/reference/comfyui``). Its model folders
hold whatever models the workflows it is given, or sent, name (``models``). Named faults
(``pytest_gemdirect.sim.faults``) reproduce the failure modes the harness has to survive.
Nothing here imports pytest.

Faults (per scene: the ``scene-NNN`` in the save node's filename_prefix, or for every prompt):

- ``history-never``: ``executed`` for the save node, then nothing more for that prompt; it leaves
  ``/queue`` and ``/history/<id>`` stays ``{}``; the worker goes on with the next prompt.
- ``history-late``: the history entry is stored ``history_late_seconds`` after
  ``execution_success`` / ``executing{node:null}`` were sent.
- ``ws-drop``: the prompt's client sockets are cut half-way through the sampler steps (or when
  the save node starts, in graphs without a sampler); the job completes normally.
- ``ws-silent``: sockets are accepted and never spoken to (per scene: the prompt's client is
  silenced from queueing until the prompt is done); the job completes normally.
- ``stall``: progress stops at ``steps-1`` of ``steps`` (or the save node never ends) until
  ``/interrupt`` ends it with ``execution_interrupted``.
- ``execution-error`` / ``flaky`` (first attempt of the scene only): ``execution_error`` from the
  sampler half-way through its steps (the save node in graphs without a sampler).
- ``view-404``: history lists output files that are never written, so ``/view`` answers 404.
- ``crash``: half-way through the sampler the process exits with code 3 (``crash_exits_process``,
  the ``python -m pytest_gemdirect.sim`` runner) or, in-thread, the server stops abruptly.
- ``view-trickle``: ``/view`` sends the file at about 1 KB/s (per scene: the scene in its subfolder).
- ``history-huge``: each ``/history`` entry gets about 50 MB of junk fields, and ``/object_info``
  too when the fault is on for every scene.
- ``names-hostile``: SaveImage lists its first frames under the names in ``HOSTILE_NAMES`` (``../``,
  absolute paths, NUL, CON, bidi, terminal escapes, markup); ``/view`` serves each exact name.
- ``history-garbage``: the first 3 ``/history/<id>`` answers are 200 with a non-JSON body.
- ``frozen`` / ``black-frames`` / ``short`` / ``wrong-size``: the frames a save node writes are all
  the same, every fourth one (1, 5, 9, ...) nearly black, half as many, or half the size.
- ``missing-model``: the first model file the first workflow names is not on the server (not
  listed, refused with ``value_not_in_list``); per scene, that scene's prompt loses its first model.

The package: ``catalog`` (the recorded table), ``models`` (the model folders), ``state`` (queue,
history, sockets), ``validation`` (validate_prompt), ``execution`` (the worker and one prompt's
run), ``graph`` (links, order, cache keys), ``registry`` (what a node sees of its run),
``behaviours`` (which implementation runs a class), ``nodes`` / ``latents`` / ``save`` / ``video``
/ ``render`` (implementations and pictures), ``values`` (what flows between nodes), ``http`` and
``faulty_http`` (routes), ``simulator`` (the server in a thread).
"""

from pytest_gemdirect.sim.comfyui.constants import (
    COMFYUI_VERSION,
    DEFAULT_CHECKPOINTS,
    DEVICE_NAME,
    VRAM_IDLE_FREE,
    VRAM_JOB,
    VRAM_TOTAL,
)
from pytest_gemdirect.sim.comfyui.errors import Interrupted, NodeFailure
from pytest_gemdirect.sim.comfyui.graph import scene_of
from pytest_gemdirect.sim.comfyui.http import create_comfyui_app
from pytest_gemdirect.sim.comfyui.simulator import ComfyUISimulator
from pytest_gemdirect.sim.comfyui.state import STATE_KEY, ComfyUIState

__all__ = [
    "COMFYUI_VERSION",
    "DEFAULT_CHECKPOINTS",
    "DEVICE_NAME",
    "STATE_KEY",
    "VRAM_IDLE_FREE",
    "VRAM_JOB",
    "VRAM_TOTAL",
    "ComfyUISimulator",
    "ComfyUIState",
    "Interrupted",
    "NodeFailure",
    "create_comfyui_app",
    "scene_of",
]
