"""A fake ComfyUI that never gets ready: prints a few lines, then sleeps without listening."""

import time

print("Checkpoint files will always be loaded safely.")
print("Total VRAM 24576 MB, total RAM 65277 MB")
print("Loading custom nodes (this one never finishes)...", flush=True)
while True:
    time.sleep(60)
