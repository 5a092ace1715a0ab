"""The scenes' generation spread over the ComfyUI servers, the GPU never idle between two scenes.

Each server is a lane holding at most two of our scenes: one running, the next already queued
behind it in ComfyUI's own queue, so the server starts it the moment the first ends. A scene's
deadline counts only from when its own prompt can start (the job follower is told it waits
behind our own previous scene). The stage tests still run in order in pytest's main thread;
they wait for their scene's results here.

Each scene's thread does the whole of the scene: its job, then, the moment the job ends and its
lane is free for the next scene, the post-job work (download, decode, checks, clip) while the next
scene generates. The frames test only waits for that result.

A server that goes away is brought back once for all the scenes on it (``Services.recover``: a
launched ComfyUI is relaunched, any other is waited for). Meanwhile the scenes on it move to
another live server when there is one, else wait for it; a lane whose server is lost takes no
more scenes. Every such incident (its cause, what became of it, what it cost in seconds) is in
the summary's ``server_incidents``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from pytest_gemdirect.services import Recovery
from pytest_gemdirect.services.launcher import probe_system_stats
from pytest_gemdirect.stages.comfyui import ComfyServer
from pytest_gemdirect.stages.context import StageContext, now
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
    recovery: Future[Recovery] | None = None  # while its server is being brought back (or was)

    @property
    def down(self) -> bool:
        return self.recovery is not None and not self.recovery.done()

    @property
    def live(self) -> bool:
        return not self.dead and not self.down


@dataclass
class SceneTicket:
    """What a scene's generation needs from the pool: its server, and how it stands in the queue."""

    scene_id: str
    server: ComfyServer
    behind: Callable[[], bool]  # an earlier scene of ours is still ahead of it on its server
    cancelled: Callable[[], str | None]  # why the scene must stop now, or None
    server_lost: Callable[[ComfyServer], ComfyServer | None]  # its server went away: a live one, or None
    server_back: Callable[[ComfyServer], Recovery | None]  # wait until that server is back (or lost)
    posted: Callable[[], None]  # its first prompt is in the server's queue
    lost_servers: Callable[[], str]  # every server lost for good, in words


SceneWork = Callable[[SceneTicket], object]
AfterJob = Callable[[SceneTicket, object], object]


class ScenePool:
    """Starts every scene in its own thread as soon as a server has room for it."""

    def __init__(self, ctx: StageContext, servers: tuple[ComfyServer, ...], scene_ids: list[str]) -> None:
        self.ctx = ctx
        self._lanes = [Lane(server) for server in servers]
        self._order = list(scene_ids)
        self._changed = threading.Condition()
        self._futures: dict[str, Future[object]] = {scene: Future() for scene in scene_ids}
        self._after: dict[str, Future[object]] = {scene: Future() for scene in scene_ids}
        self._lane_of: dict[str, Lane] = {}
        self._cancelled: dict[str, str] = {}
        self._stopping: str | None = None
        self._lost: list[str] = []  # what became of each server lost for good, in words
        self._incidents: list[dict[str, Any]] = []
        self._work: SceneWork | None = None
        self._after_job: AfterJob | None = None

    def start(self, work: SceneWork, after_job: AfterJob | None = None) -> None:
        """Run ``work(ticket)`` for every scene, in order, as lanes free up; then, in the same
        thread once the lane is free, ``after_job(ticket, work's result)``."""
        self._work, self._after_job = work, after_job
        threading.Thread(target=self._dispatch, name="gemdirect scenes", daemon=True).start()

    def result(self, scene_id: str) -> object:
        """The scene's generation (or its failure), waited for in short slices."""
        return self._wait(scene_id, self._futures[scene_id])

    def after_job(self, scene_id: str) -> object:
        """The scene's post-job work (or its failure), waited for in short slices."""
        return self._wait(scene_id, self._after[scene_id])

    def _wait(self, scene_id: str, future: Future[object]) -> object:
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
            self._changed.notify_all()
        self.ctx.active_jobs.stop(scene_id, reason)

    def lost_servers(self) -> str:
        """Every server lost for good, in words (for the scenes that were never reached)."""
        return "; ".join(self._lost)

    # --- the dispatcher and the scene threads ---------------------------------------------------

    def _dispatch(self) -> None:
        for scene_id in self._order:
            lane = self._claim_room(scene_id)
            if lane is None:
                why = self._stopping or self.ctx.server_gone or self.lost_servers() or "every server died"
                self._futures[scene_id].set_exception(NotReached(f"not reached: {why}"))
                self._after[scene_id].set_exception(NotReached(f"not reached: {why}"))
                continue
            threading.Thread(
                target=self._run_scene, args=(scene_id, lane), name=f"gemdirect {scene_id}", daemon=True
            ).start()

    def _claim_room(self, scene_id: str) -> Lane | None:
        """Once a live lane has room: the one with the fewest scenes, the scene placed on it."""
        with self._changed:
            while True:
                if self._stopping is not None or all(lane.dead for lane in self._lanes):
                    return None
                # A lane takes its next scene once the scenes it holds have queued their prompts, so
                # the server's queue has our scenes in the order the lane (and behind()) has them.
                roomy = [
                    lane
                    for lane in self._lanes
                    if lane.live and len(lane.scenes) < IN_FLIGHT and not lane.unposted
                ]
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
            server_lost=lambda server: self._server_lost(scene_id, server),
            server_back=lambda server: self._server_back(scene_id, server),
            posted=lambda: self._posted(scene_id),
            lost_servers=self.lost_servers,
        )
        value: object = None
        try:
            value = self._work(ticket)
            future.set_result(value)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting test, which shows it
            future.set_exception(exc)
            self._after[scene_id].set_exception(exc)
        finally:
            self._leave(scene_id)
        if not future.exception():
            self._run_after_job(ticket, value)

    def _run_after_job(self, ticket: SceneTicket, value: object) -> None:
        after = self._after[ticket.scene_id]
        try:
            after.set_result(self._after_job(ticket, value) if self._after_job is not None else value)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting frames test
            after.set_exception(exc)

    def _leave(self, scene_id: str) -> None:
        """The scene's job has ended: its lane has room for the next scene."""
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

    # --- a server that went away ------------------------------------------------------------------

    def _lane_for(self, server: ComfyServer) -> Lane:
        return next(lane for lane in self._lanes if lane.server.url == server.url)

    def _recovering(self, lane: Lane, scene_id: str, *, again: bool) -> Future[Recovery]:
        """The lane's recovery, started now unless one is under way or done for this death
        (``again``: the server came back and is gone again). Called holding the lock."""
        if lane.dead and lane.recovery is not None:
            return lane.recovery
        if lane.recovery is None or (again and lane.recovery.done()):
            recovery: Future[Recovery] = Future()
            lane.recovery = recovery
            running = lane.scenes[0] if lane.scenes else scene_id  # the scene it died under
            threading.Thread(
                target=self._recover, args=(lane, recovery, running), name="gemdirect recovery", daemon=True
            ).start()
        return lane.recovery

    def _recover(self, lane: Lane, recovery: Future[Recovery], scene_id: str) -> None:
        server = lane.server
        self.ctx.summary.warn(f"{server.name} at {server.url} went away during {scene_id}; bringing it back")
        noticed = now()
        try:
            outcome = self.ctx.services.recover(server.url, stopped=lambda: self._stopping)
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave the scenes waiting
            outcome = Recovery(server.url, "lost", 0.0, f"recovery failed: {type(exc).__name__}: {exc}", {})
        incident = {"server": server.name, "scene": scene_id, "noticed_at": noticed, **outcome.to_dict()}
        with self._changed:
            self._incidents.append(incident)
            if not outcome.back:
                lane.dead = True
                self._lost.append(f"{server.name}: {outcome.detail}")
            recovery.set_result(outcome)
            self._changed.notify_all()
        self.ctx.summary.set_section("server_incidents", list(self._incidents))
        self.ctx.summary.warn(f"{server.name}: {outcome.detail}")

    def _server_lost(self, scene_id: str, server: ComfyServer) -> ComfyServer | None:
        """The scene's server went away: another live server at once, else that one once it is
        back; None when it is lost for good and no other server is left."""
        again = self._gone_again(server)
        with self._changed:
            lane = self._lane_of.get(scene_id) or self._lane_for(server)
            recovery = self._recovering(lane, scene_id, again=again)
            if scene_id in lane.scenes:
                lane.scenes.remove(scene_id)
                lane.unposted.discard(scene_id)
            self._lane_of.pop(scene_id, None)
            self._changed.notify_all()
        outcome = self._await(scene_id, recovery, elsewhere=True)
        with self._changed:
            target = self._live_lane(exclude=lane if outcome is None or not outcome.back else None)
            if target is None:
                return None
            target.scenes.append(scene_id)
            self._lane_of[scene_id] = target
            self._changed.notify_all()
            return target.server

    def _server_back(self, scene_id: str, server: ComfyServer) -> Recovery | None:
        """Wait until ``server`` is back (a finished scene's download wants its files from it)."""
        again = self._gone_again(server)
        with self._changed:
            recovery = self._recovering(self._lane_for(server), scene_id, again=again)
        return self._await(scene_id, recovery, elsewhere=False)

    def _gone_again(self, server: ComfyServer) -> bool:
        """The server was brought back once and does not answer now: a second death."""
        recovery = self._lane_for(server).recovery
        if recovery is None or not recovery.done() or not recovery.result().back:
            return False
        state, _ = probe_system_stats(server.url, connect_timeout=0.5, read_timeout=2.0)
        return state != "comfyui"

    def _live_lane(self, exclude: Lane | None) -> Lane | None:
        live = [lane for lane in self._lanes if lane.live and lane is not exclude]
        return min(live, key=lambda lane: len(lane.scenes)) if live else None

    def _await(self, scene_id: str, recovery: Future[Recovery], *, elsewhere: bool) -> Recovery | None:
        """The recovery's outcome; None as soon as another live server can take the scene
        (``elsewhere``) or the scene is stopped."""
        with self._changed:
            while not recovery.done():
                if self._cancelled.get(scene_id) or self._stopping:
                    return None
                if elsewhere and self._live_lane(exclude=None) is not None:
                    return None
                self._changed.wait(WAIT_SLICE_S)
        return recovery.result()
