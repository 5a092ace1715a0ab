"""A ComfyUI client that follows jobs under deadlines; imports nothing from pytest."""
