"""Triton block-diffusion attention kernels, shipped as ``sglang_trimode.kernels``.

The kernels, their launchers and their pure-torch references land with the kernels issue; this
package imports without sglang and without a GPU.
"""
