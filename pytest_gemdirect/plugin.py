"""pytest wiring for pytest-gemdirect (options, markers, fixtures, hooks)."""
