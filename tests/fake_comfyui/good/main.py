"""A fake ComfyUI install: ``python main.py --listen HOST --port P`` serves the gemdirect simulator.

Parses the options like ComfyUI's ``main.py`` (unknown ones are ignored), prints the start-up lines
a real ComfyUI 0.3.x prints (one custom node fails to import, so the log parser has something to
find), then runs ``python -m pytest_gemdirect.sim --host <listen> --comfyui-port <port>`` in this
process, so the launcher's process is the server. ``--base-directory`` (ComfyUI's own option) keeps
its input/ and output/ folders across relaunches; ``GEMDIRECT_LAUNCHED_SIM_FAULTS`` (set by the
harness from ``--sim-fault``) switches simulator faults on.
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--cpu", action="store_true")
parser.add_argument("--cuda-device", type=int, default=None)
parser.add_argument("--base-directory", default=None)  # ComfyUI's own: where input/ and output/ live
parser.add_argument("--sim-step-seconds", default=None)  # the stand-in's sampler speed (tests only)
args, _unknown = parser.parse_known_args()

here = os.path.dirname(os.path.abspath(__file__))
foo = os.path.join(here, "custom_nodes", "ComfyUI-Foo")
if args.cuda_device is not None:
    print(f"Set cuda device to: {args.cuda_device}")
print("Checkpoint files will always be loaded safely.")
print("Total VRAM 24576 MB, total RAM 65277 MB")
print("pytorch version: 2.8.0+cu128")
print("Set vram state to: NORMAL_VRAM")
print("Device: cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync")
print("Using pytorch attention")
print(f"Python version: {sys.version}")
print("ComfyUI version: 0.3.64")
print("Traceback (most recent call last):")
print(f'  File "{os.path.join(here, "custom_nodes", "ComfyUI-Foo", "__init__.py")}", line 1, in <module>')
print("    import skimage")
print("ModuleNotFoundError: No module named 'skimage'")
print()
print(f"Cannot import {foo} module for custom nodes: No module named 'skimage'")
print()
print("Import times for custom nodes:")
print(f"   0.0 seconds: {os.path.join(here, 'custom_nodes', 'websocket_image_save.py')}")
print(f"   0.0 seconds (IMPORT FAILED): {foo}")
print()
print("Starting server")
print()
print(f"To see the GUI go to: http://{args.listen}:{args.port}", flush=True)

from pytest_gemdirect.sim.__main__ import main  # noqa: E402

# The harness hands a launched stand-in the run's --sim-fault specs; a fault that restarts the
# server ends this process instead (the harness relaunches it, on the same --base-directory).
argv = ["--host", args.listen, "--comfyui-port", str(args.port), "--restart-exits"]
if args.base_directory:
    argv += ["--root", args.base_directory]
if args.sim_step_seconds:
    argv += ["--step-seconds", args.sim_step_seconds]
for spec in filter(None, os.environ.get("GEMDIRECT_LAUNCHED_SIM_FAULTS", "").split(",")):
    argv += ["--fault", spec]
sys.exit(main(argv))
