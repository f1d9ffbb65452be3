"""Training a small tri-mode model: stdlib corpus, BPE tokenizer, joint AR + diffusion objective.

Entry point: ``python -m sglang_trimode.training.train --out DIR``.
"""
