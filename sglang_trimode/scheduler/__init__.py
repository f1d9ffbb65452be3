"""Mask scheduler: per-request mode and draft length, packing into one forward, auto policy.

Plain Python over plain data (no sglang import); the SGLang worker drives it through a thin
adapter.
"""
