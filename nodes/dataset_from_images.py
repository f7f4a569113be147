"""Dataset from Images: IMAGE outputs of other nodes (loaders, generators) and caption STRINGs -> LORA_DATASET."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..trainer.dataset.from_images import dataset_from_pixels
from .subset_inputs import augmentation_inputs, caption_option_inputs, caption_options_from
from .wire_types import CATEGORY, LoraDataset


def to_uint8_images(batches: list[torch.Tensor]) -> list[np.ndarray]:
    """ComfyUI IMAGE batches ([B, H, W, C] floats in 0..1; a list when sizes differ) -> [H, W, 3] uint8 arrays.

    x * 255 rounded gives back exactly the bytes of an 8-bit file that LoadImage read as x = byte / 255.
    """
    images = []
    for batch in batches:
        pixels = batch if batch.dim() == 4 else batch.unsqueeze(0)
        pixels = (pixels[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        images.extend(pixels)
    return images


class LoRADatasetFromImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRADatasetFromImages",
            display_name="Dataset from Images",
            category=CATEGORY,
            description="Makes a training subset from images other nodes give (Load Image, a batch, a list) and "
                        "their captions, like one N_name folder; chain add_to to combine several sources.",
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="An IMAGE batch, or a list of images of any sizes."),
                io.String.Input("captions", multiline=True, default="",
                                tooltip="One caption per image: a STRING per image, or one line per image here. "
                                        "One line captions every image; empty = the name."),
                io.String.Input("name", default="sks dog",
                                tooltip="Like a folder's name after N_: the caption of images without one."),
                io.Int.Input("repeats", default=10, min=1, max=10000, tooltip="Repeats per epoch, like N_."),
                LoraDataset.Input("add_to", optional=True,
                                  tooltip="Another dataset to train together with these images."),
                *caption_option_inputs(),
                *augmentation_inputs(with_alpha_mask=False),
            ],
            outputs=[LoraDataset.Output(display_name="dataset")],
        )

    @classmethod
    def execute(cls, images, captions, name, repeats, add_to=None, flip_aug=(False,), random_crop=(False,),
                color_aug=(False,), **caption_settings) -> io.NodeOutput:
        # is_input_list: every input arrives as a list (images: one tensor per upstream item)
        options = caption_options_from({key: values[0] for key, values in caption_settings.items()})
        dataset = dataset_from_pixels(to_uint8_images(images), [str(c) for c in captions], name[0], int(repeats[0]),
                                      options, bool(flip_aug[0]))
        if random_crop[0] or color_aug[0]:
            dataset = dataclasses.replace(dataset, subsets=tuple(
                dataclasses.replace(s, random_crop=bool(random_crop[0]), color_aug=bool(color_aug[0]))
                for s in dataset.subsets))
        if add_to:
            dataset = add_to[0].combined_with(dataset)
        return io.NodeOutput(dataset, ui=ui.PreviewText(dataset.describe()))
