"""The networks a run trains: the algorithm table and configuration (config.py), the network of update
modules attached with hooks (base.py), and one module per algorithm (lora.py: LoRA, and LoCon as LoRA on
convolutions too; loha.py: LoHa), and continuing from a file (continue_from.py)."""

from .base import LoRANetwork
from .config import ALGORITHMS, Algorithm, NetworkConfig
from .loha import LoHaModule
from .lora import LoRAModule

__all__ = ["ALGORITHMS", "Algorithm", "LoHaModule", "LoRAModule", "LoRANetwork", "NetworkConfig"]
