"""The scenes' generation spread over the ComfyUI servers, the GPU never idle between two scenes.

Each server is a lane holding at most two of our scenes: one running, the next already queued
behind it in ComfyUI's own queue, so the server starts it the moment the first ends. A scene's
deadline counts only from when its own prompt can start (the job follower is told it waits
behind our own previous scene). A server that dies costs only the attempt on it: the scene's
next attempt goes to another live server. The stage tests still run in order in pytest's main
thread; they wait for their scene's result here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from pytest_gemdirect.stages.comfyui import ComfyServer
from pytest_gemdirect.stages.context import StageContext
from pytest_gemdirect.stages.pipeline import NotReached

IN_FLIGHT = 2  # per server: one running, one queued behind it
WAIT_SLICE_S = 0.25  # the main thread waits in slices, so Ctrl-C lands at once (Windows too)


@dataclass
class Lane:
    """One server and the scenes of ours it holds, in the order they were queued."""

    server: ComfyServer
    scenes: list[str] = field(default_factory=list)
    unposted: set[str] = field(default_factory=set)  # placed here, their first prompt not queued yet
    dead: bool = False


@dataclass
class SceneTicket:
    """What a scene's generation needs from the pool: its server, and how it stands in the queue."""

    scene_id: str
    server: ComfyServer
    behind: Callable[[], bool]  # an earlier scene of ours is still ahead of it on its server
    cancelled: Callable[[], str | None]  # why the scene must stop now, or None
    replace_server: Callable[[], ComfyServer | None]  # its server died: another live one, or None
    posted: Callable[[], None]  # its first prompt is in the server's queue


class ScenePool:
    """Starts every scene's generation in its own thread as soon as a server has room for it."""

    def __init__(self, ctx: StageContext, servers: tuple[ComfyServer, ...], scene_ids: list[str]) -> None:
        self.ctx = ctx
        self._lanes = [Lane(server) for server in servers]
        self._order = list(scene_ids)
        self._changed = threading.Condition()
        self._futures: dict[str, Future[object]] = {scene: Future() for scene in scene_ids}
        self._lane_of: dict[str, Lane] = {}
        self._cancelled: dict[str, str] = {}
        self._stopping: str | None = None
        self._work: Callable[[SceneTicket], object] | None = None

    def start(self, work: Callable[[SceneTicket], object]) -> None:
        """Run ``work(ticket)`` for every scene, in order, as lanes free up."""
        self._work = work
        threading.Thread(target=self._dispatch, name="gemdirect scenes", daemon=True).start()

    def result(self, scene_id: str) -> object:
        """The scene's generation (or its failure), waited for in short slices."""
        future = self._futures[scene_id]
        try:
            while True:
                try:
                    return future.result(timeout=WAIT_SLICE_S)
                except FutureTimeout:
                    continue
        except (KeyboardInterrupt, SystemExit) as exc:
            self.stop(f"the run was cut short ({type(exc).__name__})")
            raise
        except BaseException as exc:
            if not future.done():  # the test itself was ended (pytest-timeout): this scene stops
                self.cancel(scene_id, f"its test was ended ({type(exc).__name__}: {exc})")
            raise

    def at_work(self) -> list[str]:
        """Scenes whose generation has started and not ended."""
        with self._changed:
            return [scene for scene in self._order if scene in self._lane_of]

    def stop(self, reason: str) -> None:
        """No new scene starts; every job of ours still at work is interrupted and dequeued."""
        with self._changed:
            self._stopping = reason
            self._changed.notify_all()
        self.ctx.active_jobs.stop_all(reason)

    def cancel(self, scene_id: str, reason: str) -> None:
        with self._changed:
            self._cancelled[scene_id] = reason
        self.ctx.active_jobs.stop(scene_id, reason)

    # --- the dispatcher and the scene threads ---------------------------------------------------

    def _dispatch(self) -> None:
        for scene_id in self._order:
            lane = self._claim_room(scene_id)
            if lane is None:
                why = self._stopping or self.ctx.server_gone or "every ComfyUI server died"
                self._futures[scene_id].set_exception(NotReached(f"not reached: {why}"))
                continue
            threading.Thread(
                target=self._run_scene, args=(scene_id, lane), name=f"gemdirect {scene_id}", daemon=True
            ).start()

    def _claim_room(self, scene_id: str) -> Lane | None:
        """Once a live lane has room: the one with the fewest scenes, the scene placed on it."""
        with self._changed:
            while True:
                live = [lane for lane in self._lanes if not lane.dead]
                if self._stopping is not None or not live:
                    return None
                # A lane takes its next scene once the scenes it holds have queued their prompts, so
                # the server's queue has our scenes in the order the lane (and behind()) has them.
                roomy = [lane for lane in live if len(lane.scenes) < IN_FLIGHT and not lane.unposted]
                if roomy:
                    lane = min(roomy, key=lambda lane: len(lane.scenes))
                    lane.scenes.append(scene_id)
                    lane.unposted.add(scene_id)
                    self._lane_of[scene_id] = lane
                    return lane
                self._changed.wait()

    def _run_scene(self, scene_id: str, lane: Lane) -> None:
        assert self._work is not None
        future = self._futures[scene_id]
        ticket = SceneTicket(
            scene_id,
            lane.server,
            behind=lambda: self._is_behind(scene_id),
            cancelled=lambda: self._cancelled.get(scene_id) or self._stopping,
            replace_server=lambda: self._replace(scene_id),
            posted=lambda: self._posted(scene_id),
        )
        try:
            future.set_result(self._work(ticket))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting test, which shows it
            future.set_exception(exc)
        finally:
            with self._changed:
                current = self._lane_of.pop(scene_id, None)
                if current is not None and scene_id in current.scenes:
                    current.scenes.remove(scene_id)
                    current.unposted.discard(scene_id)
                self._changed.notify_all()

    def _posted(self, scene_id: str) -> None:
        with self._changed:
            lane = self._lane_of.get(scene_id)
            if lane is not None and scene_id in lane.unposted:
                lane.unposted.discard(scene_id)
                self._changed.notify_all()

    def _is_behind(self, scene_id: str) -> bool:
        with self._changed:
            lane = self._lane_of.get(scene_id)
            return lane is not None and lane.scenes.index(scene_id) > 0

    def _replace(self, scene_id: str) -> ComfyServer | None:
        """The scene's server died: mark its lane dead and move the scene to the emptiest live one."""
        with self._changed:
            lane = self._lane_of[scene_id]
            lane.dead = True
            lane.scenes.remove(scene_id)
            lane.unposted.discard(scene_id)
            live = [x for x in self._lanes if not x.dead]
            if not live:
                self._lane_of.pop(scene_id)
                self._changed.notify_all()
                return None
            target = min(live, key=lambda x: len(x.scenes))
            target.scenes.append(scene_id)
            self._lane_of[scene_id] = target
            self._changed.notify_all()
            return target.server
