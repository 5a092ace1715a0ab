"""The values that flow between simulated nodes in place of torch tensors and models."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable, Iterator
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
    end_image: Image.Image | None = None  # a first-last-frame video's last keyframe

    def __str__(self) -> str:
        return f"{{'samples': tensor of shape [{self.frames}, 4, {self.height // 8}, {self.width // 8}]}}"

    def replace(self, **changes: Any) -> Latent:
        """A copy with some fields changed (a sampled latent keeps the shape it was given)."""
        return dataclasses.replace(self, **changes)


class Frames:
    """An IMAGE batch whose frames are drawn when asked for, one at a time.

    ComfyUI holds a decoded video as one tensor; holding 250 Full-HD-ish frames as Pillow images
    made the simulator grow by gigabytes, so a batch here is a recipe: ``draw(i)`` makes frame
    ``i`` and the save nodes write each frame as soon as it is drawn. ``key(i)`` names the
    picture: frames with equal keys are the same picture (a repeated keyframe is drawn and
    encoded once).
    """

    def __init__(
        self,
        count: int,
        draw: Callable[[int], Image.Image],
        key: Callable[[int], Hashable] | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.count = count
        self._draw = draw
        self._key = key
        self._size = size

    @classmethod
    def of(cls, images: list[Image.Image]) -> Frames:
        """A batch of pictures already in memory (a loaded image, a few frames)."""
        size = images[0].size if images else (0, 0)
        return cls(len(images), images.__getitem__, lambda i: ("image", id(images[i])), size)

    def key(self, index: int) -> Hashable:
        return self._key(index) if self._key is not None else (id(self), index)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames; the first frame is drawn when it is not known up front."""
        if self._size is None:
            self._size = self[0].size if self.count else (0, 0)
        return self._size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Image.Image:
        if not -self.count <= index < self.count:
            raise IndexError(index)
        return self._draw(index % self.count)

    def __iter__(self) -> Iterator[Image.Image]:
        return (self._draw(i) for i in range(self.count))

    def repeat(self, amount: int) -> Frames:
        """RepeatImageBatch: the whole batch ``amount`` times."""
        n = self.count
        if n == 0 or amount <= 0:
            return Frames(0, self._draw, self._key, self._size)
        return Frames(n * amount, lambda i: self._draw(i % n), lambda i: self.key(i % n), self._size)

    def concat(self, other: Frames) -> Frames:
        """ImageBatch: this batch's frames, then ``other``'s (of the same size)."""
        n = self.count

        def draw(index: int) -> Image.Image:
            return self._draw(index) if index < n else other[index - n]

        def key(index: int) -> Hashable:
            return self.key(index) if index < n else other.key(index - n)

        return Frames(n + other.count, draw, key, self._size or other._size)

    def map(self, fn: Callable[[Image.Image], Image.Image], size: tuple[int, int] | None = None) -> Frames:
        """A per-frame operation, applied when a frame is drawn; each picture is worked on once
        while it is recent (a repeated keyframe is scaled once, not once per copy)."""
        recent: dict[Hashable, Image.Image] = {}
        lock = threading.Lock()

        def draw(index: int) -> Image.Image:
            key = self.key(index)
            with lock:
                done = recent.get(key)
            if done is None:
                done = fn(self._draw(index))
                with lock:
                    if len(recent) >= 4:
                        recent.pop(next(iter(recent)))
                    recent[key] = done
            return done

        return Frames(self.count, draw, lambda i: ("map", id(recent), self.key(i)), size)


def describe(value: Any) -> str:
    if isinstance(value, Frames) and len(value):
        width, height = value.size
        return f"tensor of shape [{len(value)}, {height}, {width}, 3]"
    if isinstance(value, list) and value and isinstance(value[0], Image.Image):
        first = value[0]
        return f"tensor of shape [{len(value)}, {first.height}, {first.width}, 3]"
    return str(value)
