"""The ways a node run ends other than with outputs, and the tracebacks the real server reports."""

from __future__ import annotations


def full_type_name(exc_type: type) -> str:
    module = exc_type.__module__
    if module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


class NodeFailure(Exception):
    """A node raised at run time; becomes ``execution_error``."""

    def __init__(self, message: str, exception_type: str = "Exception", tb: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exception_type = exception_type
        self.tb = tb


class Interrupted(Exception):
    """The running prompt was interrupted; becomes ``execution_interrupted``."""


class Abandon(Exception):
    """history-never: the prompt is dropped without completion messages or history."""


class Crash(Exception):
    """crash: the simulated server went away mid-generation."""


def save_traceback() -> list[str]:
    return [
        '  File "/opt/ComfyUI/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(...)\n",
        '  File "/opt/ComfyUI/nodes.py", line 1590, in save_images\n'
        "    full_output_folder, filename, counter, subfolder, filename_prefix = "
        "folder_paths.get_save_image_path(...)\n",
        '  File "/opt/ComfyUI/folder_paths.py", line 397, in get_save_image_path\n    raise Exception(err)\n',
    ]


def sampler_traceback() -> list[str]:
    return [
        '  File "/opt/ComfyUI/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(...)\n",
        '  File "/opt/ComfyUI/nodes.py", line 1525, in sample\n'
        "    return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, "
        "latent_image, denoise=denoise)\n",
        '  File "/opt/ComfyUI/comfy/sample.py", line 60, in sample\n'
        "    samples = sampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image, ...)\n",
        '  File "/opt/ComfyUI/comfy/ldm/modules/attention.py", line 598, in attention_pytorch\n'
        "    out = comfy.ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, "
        "is_causal=False)\n",
        "  [gemdirect-sim: simulated failure]\n",
    ]
