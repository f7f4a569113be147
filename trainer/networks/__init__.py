"""The networks a run trains: the algorithm table and configuration (config.py), the network of update
modules attached with hooks (base.py), one module per algorithm (lora.py: LoRA, and LoCon as LoRA on
convolutions too; dora.py: DoRA, a LoRA variant; loha.py: LoHa; lokr.py: LoKr; dylora.py: DyLoRA), and
continuing from a file (continue_from.py)."""

from .base import LoRANetwork
from .config import ALGORITHMS, TRAIN_ON, Algorithm, NetworkConfig
from .dora import DoRAModule
from .dylora import DyLoRAModule
from .loha import LoHaModule
from .lokr import LoKrModule
from .lora import LoRAModule

__all__ = ["ALGORITHMS", "TRAIN_ON", "Algorithm", "DoRAModule", "DyLoRAModule", "LoHaModule", "LoKrModule",
           "LoRAModule", "LoRANetwork", "NetworkConfig"]
