"""Kernels with pure-torch fallbacks (Triton on GPU; tested on CPU with TRITON_INTERPRET=1)."""
