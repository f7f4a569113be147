"""Making a shared model's weights usable by autograd without keeping a second copy.

Hosts such as ComfyUI build and load models inside `torch.inference_mode()`, which makes every weight an
"inference tensor". Backpropagating into a LoRA means autograd saves the base layers' weights for the
input gradients, and inference tensors cannot be saved. Each such weight is replaced, one at a time,
by an ordinary copy: the old tensor is freed as soon as it is swapped, so the model never exists twice
(peak extra memory is one tensor), and later runs find nothing left to convert.
"""

from __future__ import annotations

import torch
from torch import nn


def replace_inference_tensors(root: nn.Module) -> int:
    """Swap inference-tensor parameters and buffers under `root` for ordinary ones; returns bytes converted."""
    converted = 0
    with torch.inference_mode(False), torch.no_grad():
        for module in root.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and param.is_inference():
                    module._parameters[name] = nn.Parameter(param.clone(), requires_grad=param.requires_grad)
                    converted += param.numel() * param.element_size()
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()
                    converted += buffer.numel() * buffer.element_size()
    return converted
