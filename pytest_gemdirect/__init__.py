"""pytest-gemdirect: the end-to-end check of a story-to-video pipeline as a pytest plugin."""

__version__ = "0.1.0"
