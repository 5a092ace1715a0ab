"""Embedded simulators of ComfyUI and of an OpenAI-compatible LLM server, usable without pytest."""
