"""A fake ComfyUI that dies during start-up: prints a traceback (like a broken torch) and exits 3."""

import sys

print("Checkpoint files will always be loaded safely.")
print("Traceback (most recent call last):")
print('  File "main.py", line 147, in <module>')
print("    import execution")
print('  File "comfy/model_management.py", line 221, in <module>')
print("    total_vram = get_total_memory(get_torch_device()) / (1024 * 1024)")
print(
    "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"
    " and installed a driver from http://www.nvidia.com/Download/index.aspx",
    flush=True,
)
sys.exit(3)
