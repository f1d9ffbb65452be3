"""SGLang integration of sglang-trimode (the only package that imports `sglang.srt`).

`plugin.register()` is the `sglang.srt.plugins` entry point; `model.NemotronLabsDiffusionModel`
is the SGLang model class (plain AR serving); `cpu_platform/` holds the CPU stand-in for the
CUDA-only `sgl_kernel` package, used by the CPU tests only.
"""
