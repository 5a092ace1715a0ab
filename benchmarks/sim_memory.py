"""Peak RSS of the ComfyUI simulator process while it makes 3 scenes of 250 frames each.

Starts ``python -m pytest_gemdirect.sim`` in a subprocess, uploads one keyframe, queues the SVD
workflow (fixtures/workflows/svd_img2vid.json) once per scene with ``video_frames`` set to the
frame count, waits for each scene's history entry while sampling the simulator's RSS (psutil,
children included), downloads every frame through ``/view`` and prints the peak.

    python benchmarks/sim_memory.py [--scenes 3] [--frames 250] [--width 1024 --height 576]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
from PIL import Image

WORKFLOW = Path(__file__).resolve().parents[1] / "fixtures" / "workflows" / "svd_img2vid.json"


def rss_tree(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_tree(self.proc))
            except psutil.Error:
                return
            self.stop.wait(self.interval)


def start_simulator(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = root / "ready.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_gemdirect.sim",
            "--root",
            str(root / "comfy"),
            "--step-seconds",
            "0",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the simulator did not start")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text(encoding="utf-8"))["comfyui_url"]


def keyframe_png(width: int, height: int) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def run_scene(http: requests.Session, url: str, scene: int, args: argparse.Namespace) -> int:
    graph = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    graph["2"]["inputs"]["image"] = "keyframe.png"
    graph["3"]["inputs"].update(width=args.width, height=args.height, video_frames=args.frames)
    graph["5"]["inputs"]["seed"] = scene  # a new seed: nothing cached from the previous scene
    graph["7"]["inputs"]["filename_prefix"] = f"gemdirect/scene-{scene:03}/bench/frame"
    answer = http.post(url + "/prompt", json={"prompt": graph, "client_id": "bench"}, timeout=30)
    answer.raise_for_status()
    prompt_id = answer.json()["prompt_id"]
    deadline = time.monotonic() + args.timeout
    while True:
        entry = http.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        if entry:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"scene {scene}: no history within {args.timeout} s")
        time.sleep(0.2)
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    for image in images:  # download like the harness does; streamed, never kept
        with http.get(url + "/view", params=image, stream=True, timeout=30) as response:
            response.raise_for_status()
            for _ in response.iter_content(1 << 16):
                pass
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_simulator(Path(tmp))
        try:
            http = requests.Session()
            files = {"image": ("keyframe.png", keyframe_png(args.width, args.height), "image/png")}
            http.post(url + "/upload/image", files=files, timeout=30).raise_for_status()
            sampler = PeakSampler(proc.pid)
            baseline = rss_tree(sampler.proc)
            sampler.start()
            began = time.monotonic()
            counts = [run_scene(http, url, n, args) for n in range(1, args.scenes + 1)]
            wall = time.monotonic() - began
            sampler.stop.set()
            sampler.join()
            final = rss_tree(sampler.proc)
        finally:
            proc.terminate()
            proc.wait(30)
    mib = 1024 * 1024
    print(
        f"{args.scenes} scenes x {args.frames} frames of {args.width}x{args.height}"
        f" ({sum(counts)} files): peak RSS {sampler.peak / mib:.0f} MiB"
        f" (idle {baseline / mib:.0f} MiB, after {final / mib:.0f} MiB), {wall:.1f} s wall"
    )


if __name__ == "__main__":
    main()
