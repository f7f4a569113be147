"""The dataset: what it is (records.py), folders on disk (folders.py) and images from the graph
(from_images.py), caption files (captions.py) and per-step caption processing (caption_processing.py),
images and kohya's resizing (images.py), aspect-ratio buckets (buckets.py), regularization balance."""

from .folders import load_dataset_folder, parse_repeat_folder_name
from .records import Dataset, ImageEntry, Skipped, Subset

__all__ = ["Dataset", "ImageEntry", "Skipped", "Subset", "load_dataset_folder", "parse_repeat_folder_name"]
