"""Modules: drop-in replacements for ``torch.nn`` layers (same arguments, same state_dict keys)."""
from fastnets.nn.dropout import Dropout

__all__ = ["Dropout"]
