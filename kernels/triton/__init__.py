"""``@triton.jit`` kernels (the lowest tier); call them through the launchers in
``sglang_trimode.kernels``, which check their inputs."""
