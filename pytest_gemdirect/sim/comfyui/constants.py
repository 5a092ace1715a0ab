"""What the simulated server says it is (ComfyUI 0.3.64 on a 24 GB GPU) and the limits it keeps."""

from __future__ import annotations

import re

COMFYUI_VERSION = "0.3.64"
GIB = 1024**3
VRAM_TOTAL = 24 * GIB
VRAM_IDLE_FREE = VRAM_TOTAL - 640 * 1024**2  # the desktop and the CUDA context hold a little
VRAM_JOB = 8 * GIB  # what an SVD run holds while it executes
DEVICE_NAME = "cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync"
DEFAULT_CHECKPOINTS: tuple[str, ...] = ("svd_xt.safetensors", "v1-5-pruned-emaonly-fp16.safetensors")
MODEL_FOLDERS = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
)
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
MAXIMUM_HISTORY_SIZE = 10000
SCENE_RE = re.compile(r"scene-\d{3}")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PNG_COMPRESS_LEVEL = 1  # real SaveImage uses 4; 1 keeps 25 frames of 1024x576 well under a second

# names-hostile: output names a careless client would trip over (paths, devices, NUL, bidi, escapes,
# markup). The files are stored under safe names; /view serves each under exactly this name.
HOSTILE_NAMES: tuple[str, ...] = (
    "../../../escape_00001_.png",
    "/etc/gemdirect_abs_00002_.png",
    "C:\\Windows\\Temp\\gemdirect_abs_00003_.png",
    "nul\x00byte_00004_.png",
    "CON",
    "aux.png",
    "frame_00007_\u202egnp.exe",
    "\x1b[2J\x1b[Hframe_00008_.png",
    "\x1b]0;pwned\x07frame_00009_.png",
    "<script>alert(1)</script>_00010_.png",
)
