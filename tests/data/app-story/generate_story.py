"""A stand-in for the app's story generator (``npx tsx scripts/generate-story-scenes.ts --out FILE``).

Writes a story in the app's shape to ``--out`` (and the first scene's keyframe beside it, as the app
does), printing progress as it goes. ``--fail`` ends with an error like the app's when its LLM is
down; ``--hang`` starts a child process and waits forever (for the harness's deadline), writing
both process ids to ``--pids``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--pids")
    args = parser.parse_args()
    print(f"generate-story-scenes: {args.scenes} scenes -> {args.out}", flush=True)
    if args.fail:
        print("requesting the story from http://127.0.0.1:1234/v1/chat/completions", flush=True)
        print("error: LM Studio is not reachable (ECONNREFUSED 127.0.0.1:1234)", file=sys.stderr, flush=True)
        return 3
    if args.hang:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        if args.pids:
            Path(args.pids).write_text(f"{os.getpid()} {child.pid}", encoding="utf-8")
        print("waiting for the LLM ...", flush=True)
        time.sleep(600)
        return 0
    out = Path(args.out)
    scenes = []
    for number in range(1, args.scenes + 1):
        print(f"scene {number}/{args.scenes}", flush=True)
        scenes.append(
            {
                "id": f"scene-{number:03d}",
                "title": f"Generated scene {number}",
                "summary": f"Scene {number} of the generated story.",
                "prompt": f"generated prompt {number}: a lighthouse on a cliff in a storm, wide shot",
                "mood": "tense",
                "keyframePath": f"keyframes/scene-{number:03d}.png",
                "expectedFrames": 49,
                "negativePrompt": f"generated negative {number}",
                "cameraMovement": "slow orbit around the lighthouse",
            }
        )
    from PIL import Image

    (out.parent / "keyframes").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 54), (200, 40, 40)).save(out.parent / "keyframes" / "scene-001.png")
    story = {
        "storyId": "generated-story",
        "generatedAt": "2026-12-01T10:00:00.000Z",
        "logline": "A story written by the generator script.",
        "directorsVision": "Storm light.",
        "scenes": scenes,
        "generator": {"name": "generate_story.py", "cwd": os.getcwd()},
        "llm": {"provider": "none"},
        "warnings": [],
    }
    out.write_text(json.dumps(story, indent=2), encoding="utf-8")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
