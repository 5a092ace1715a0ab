"""The values that flow between simulated nodes in place of torch tensors and models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image


class Token:
    """A stand-in for a torch object (model, VAE, conditioning) that prints like one."""

    def __init__(self, kind: str, type_name: str, **info: Any) -> None:
        self.kind = kind
        self.type_name = type_name
        self.info = info

    def __str__(self) -> str:
        return f"<{self.type_name} object at 0x{id(self):x}>"

    __repr__ = __str__


@dataclass
class Latent:
    init_image: Image.Image | None
    width: int
    height: int
    frames: int
    seed: int = 0
    sampled: bool = False
    text: str | None = None  # the positive prompt of a text-to-image graph

    def __str__(self) -> str:
        return f"{{'samples': tensor of shape [{self.frames}, 4, {self.height // 8}, {self.width // 8}]}}"


def describe(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], Image.Image):
        first = value[0]
        return f"tensor of shape [{len(value)}, {first.height}, {first.width}, 3]"
    return str(value)
