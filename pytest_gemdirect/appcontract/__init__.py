"""The app's run contract: the harness's run directory also read by the app's own tools.

gemDirect1 has a run-summary validator, an artifact viewer (``public/artifacts/latest-run.json``)
and a vitest runner (``vitest-results.json``). This package maps the harness's summary (the dict
summary.py keeps) to their shape, with values taken from what the run recorded and nothing made
up: ``mapping`` builds the JSON, ``lines`` the app's section of run-summary.txt, ``export``
writes it all beside the summary, ``startup`` checks its settings before the run.

Nothing here is imported at plugin load: the summary writer imports it when it first writes.
"""

from pytest_gemdirect.appcontract.export import APP_SECTION_TITLE, export, publish_latest, warnings_for

__all__ = ["APP_SECTION_TITLE", "export", "publish_latest", "warnings_for"]
