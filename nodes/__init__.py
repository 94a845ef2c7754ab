"""ComfyUI nodes: thin V3 adapters over fair_core. Imported only by ComfyUI (through the pack's __init__.py)."""
