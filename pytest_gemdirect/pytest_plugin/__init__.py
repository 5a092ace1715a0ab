"""The pytest face: the only modules that import pytest (wiring, the run, terminal, xdist, timeout)."""
