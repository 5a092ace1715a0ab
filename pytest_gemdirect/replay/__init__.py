"""Record a run's conversation with its servers, and play it back in place of the servers.

- :mod:`~pytest_gemdirect.replay.recorder`: the clients' transports write every exchange with
  ComfyUI and the LLM into the run directory's ``trace/`` (JSON Lines, output files once by
  content hash under ``trace/blobs/``).
- :mod:`~pytest_gemdirect.replay.trace`: reading a trace back: its header, its label
  ("REPLAYED from …") and the settings a later run changed.
- :mod:`~pytest_gemdirect.replay.server`: an aiohttp server that answers a new run from a trace
  (``python -m pytest_gemdirect.replay``, started by the harness for ``--replay``).

Nothing here imports pytest.
"""

from __future__ import annotations

TRACE_DIR = "trace"
"""The trace's folder inside a run directory."""

EXCHANGES = "exchanges.jsonl"
"""The trace's records, one JSON object a line: a header, then HTTP exchanges and WebSocket frames."""

BLOBS = "blobs"
"""Bodies too large or not text (``/view`` files, uploads, ``/object_info``), by sha256."""

FORMAT = 1
"""The trace format; a replay refuses a trace of another format."""
