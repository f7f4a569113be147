"""The dataset: folders and their subsets (folders.py), caption files (captions.py), images and kohya's
resizing (images.py), aspect-ratio buckets (buckets.py)."""

from .folders import Dataset, ImageEntry, Skipped, Subset, load_dataset_folder, parse_repeat_folder_name

__all__ = ["Dataset", "ImageEntry", "Skipped", "Subset", "load_dataset_folder", "parse_repeat_folder_name"]
