"""What the embedded ComfyUI costs for one WAN 2.2 scene (49 frames at 1280x544, H.264), and which
behaviour covers which of the recorded core classes.

Starts ``python -m pytest_gemdirect.sim`` on loopback (told the graph's model names, as the harness
does), uploads a 1280x544 keyframe, queues tests/data/graphs/wan22_i2v.json (20 sampler steps at the
default 0.01 s a step) and waits for its /history entry. Prints, as the median of ``--runs`` scenes
(each a fresh simulator): the simulator's CPU seconds for the scene, the wall seconds from queueing
to the history entry, the peak RSS of the simulator process, then the class list by behaviour.

    python benchmarks/sim_cost.py [--runs 3] [--steps 20] [--no-classes]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_tools import Simulator, median

from pytest_gemdirect.sim.comfyui.behaviours import behaviour_table

GRAPH = Path(__file__).resolve().parents[1] / "tests" / "data" / "graphs" / "wan22_i2v.json"


def keyframe_png() -> bytes:
    image = Image.linear_gradient("L").resize((1280, 544)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def one_scene(folder: Path, steps: int) -> tuple[float, float, float, int]:
    """(CPU s, wall s, peak RSS MB, frames) of one scene on a fresh simulator."""
    with Simulator(folder, "--models-from", str(GRAPH)) as sim:
        http = requests.Session()
        files = {"image": ("keyframe.png", keyframe_png(), "image/png")}
        assert http.post(sim.url + "/upload/image", files=files, timeout=30).status_code == 200
        graph = json.loads(GRAPH.read_text(encoding="utf-8"))
        graph["9"]["inputs"]["steps"] = steps
        proc = psutil.Process(sim.popen.pid)
        cpu_before = sum(proc.cpu_times()[:2])
        start = time.monotonic()
        answer = http.post(sim.url + "/prompt", json={"prompt": graph}, timeout=30)
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        while True:
            entry = http.get(f"{sim.url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
            if entry is not None:
                break
            if time.monotonic() - start > 300:
                raise TimeoutError("the scene did not finish in 300 s")
            time.sleep(0.05)
        wall = time.monotonic() - start
        cpu = sum(proc.cpu_times()[:2]) - cpu_before
        assert entry["status"]["status_str"] == "success", entry["status"]
        (item,) = entry["outputs"]["12"]["images"]
        video = http.get(sim.url + "/view", params=item, timeout=30).content
        import av

        with av.open(io.BytesIO(video)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        peak = sim.peak_rss_mb()
        http.close()
    return cpu, wall, peak, frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-classes", action="store_true", help="skip the list of classes by behaviour")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="gemdirect-sim-cost-") as tmp:
        for run in range(args.runs):
            results.append(one_scene(Path(tmp) / f"run{run}", args.steps))
    frames = {r[3] for r in results}
    print(f"one WAN 2.2 scene, 49 frames at 1280x544 (H.264 MP4), {args.steps} steps, median of {args.runs}:")
    print(f"  simulator CPU   {median([r[0] for r in results]):6.2f} s")
    print(f"  wall            {median([r[1] for r in results]):6.2f} s  (queue to history entry)")
    print(f"  peak RSS        {median([r[2] for r in results]):6.1f} MB (simulator process, LLM included)")
    print(f"  frames decoded  {', '.join(map(str, sorted(frames)))}")
    if not args.no_classes:
        table = behaviour_table()
        print(f"\n{sum(len(v) for v in table.values())} recorded classes by behaviour:")
        for behaviour, classes in sorted(table.items(), key=lambda kv: -len(kv[1])):
            print(f"\n{behaviour} ({len(classes)}):\n  " + ", ".join(classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
