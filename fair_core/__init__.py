"""fair_core: fair sampling for diffusion models, in pure torch (never imports ComfyUI).

See DESIGN.md for the contracts: the Denoiser (``denoised = model(x, sigma, **extra_args)``), the samplers and
the checkpoint format.
"""
__version__ = "0.1.0"
