"""Load Dataset Folder: a kohya-layout folder (N_name sub-folders, captions beside images) -> LORA_DATASET."""

from __future__ import annotations

import hashlib
import os

from comfy_api.latest import io, ui

from ..trainer.dataset import load_dataset_folder
from ..trainer.errors import TrainerError
from .subset_inputs import augmentation_inputs, caption_option_inputs, caption_options_from
from .comfy_host import resolve_dataset_folder
from .wire_types import CATEGORY, LoraDataset


def folder_signature(root: str) -> str:
    """Names, sizes and modification times of the folder's files, so edits re-run the node.

    The latent cache's own files (.npz, and half-written .partial-*) are left out: writing them must not
    make ComfyUI re-run the dataset and everything after it. Linked N_name folders are followed, as the
    dataset reads them; only the two levels the dataset reads are walked, so a link loop cannot trap it.
    """
    digest = hashlib.sha256()
    if not os.path.isdir(root):
        return "missing:" + root
    for current, folders, files in os.walk(root, followlinks=True):
        folders.sort()
        if os.path.relpath(current, root) != ".":
            digest.update(f"{os.path.relpath(current, root)}/ {' | '.join(folders)}\n".encode())
            folders.clear()                 # folders inside N_name folders are reported by name, never read
        for name in sorted(files):
            if name.endswith(".npz") or name.startswith(".partial-"):
                continue
            path = os.path.join(current, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(path, root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class LoRALoadDatasetFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRALoadDatasetFolder",
            display_name="Load Dataset Folder",
            category=CATEGORY,
            description="Reads a training folder in kohya's layout: sub-folders named N_name, where N is how "
                        "often each image repeats per epoch and name is the caption for images without one.",
            inputs=[
                io.String.Input("folder", default="lora_dataset",
                                tooltip="Absolute path, or a path relative to ComfyUI's input folder. It must hold "
                                        "sub-folders such as '10_sks dog'."),
                io.String.Input("caption_extension", default=".txt",
                                tooltip="Caption files are <image name><extension> beside each image "
                                        "(kohya_ss GUI default .txt; sd-scripts CLI default .caption)."),
                io.String.Input("regularization_folder", default="", optional=True,
                                tooltip="Optional regularization (class) images in the same N_name layout, e.g. "
                                        "'1_dog'. kohya balances them to as many samples as the training images; "
                                        "their loss weight is Train's prior_loss_weight."),
                io.String.Input("repeats", default="", optional=True,
                                tooltip="Override repeat counts: 'sks dog=5, style=2' (a sub-folder by its full name "
                                        "or the part after N_). Also admits a sub-folder without an N_ prefix."),
                LoraDataset.Input("add_to", optional=True,
                                  tooltip="Another dataset to train together with this folder, e.g. a character "
                                          "folder and a style folder; each keeps its repeats and caption settings."),
                *caption_option_inputs(),
                *augmentation_inputs(),
            ],
            outputs=[LoraDataset.Output(display_name="dataset")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, caption_extension, regularization_folder="", repeats="", add_to=None,
                           **subset_settings):
        # add_to is covered by the executor's own input signature (it re-runs when the upstream node changes)
        if not all(isinstance(value, str) for value in (folder, caption_extension, regularization_folder, repeats)):
            # a linked input arrives here as None, before its node ran: always re-read the folder
            return float("nan")
        try:
            signature = folder_signature(resolve_dataset_folder(folder)) + caption_extension
            if regularization_folder.strip():
                signature += "|reg:" + folder_signature(resolve_dataset_folder(regularization_folder,
                                                                               "Regularization folder"))
        except TrainerError:        # a folder that cannot be used: run, so that execute shows why
            return float("nan")
        # caption settings are ordinary widget values: the executor's input signature covers them
        return signature + "|repeats:" + repeats

    @classmethod
    def execute(cls, folder, caption_extension, regularization_folder="", repeats="", add_to=None, flip_aug=False,
                alpha_mask=False, random_crop=False, color_aug=False, **caption_settings) -> io.NodeOutput:
        regularization = (resolve_dataset_folder(regularization_folder, "Regularization folder")
                          if regularization_folder.strip() else "")
        dataset = load_dataset_folder(resolve_dataset_folder(folder), caption_extension, regularization, repeats,
                                      caption_options_from(caption_settings), flip_aug, alpha_mask, random_crop,
                                      color_aug)
        if add_to is not None:
            dataset = add_to.combined_with(dataset)
        return io.NodeOutput(dataset, ui=ui.PreviewText(dataset.describe()))
