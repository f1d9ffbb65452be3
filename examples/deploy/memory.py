"""GPU memory per GPU of a Nemotron-Labs-Diffusion deployment: weights + KV cache (+ TRIMODE slots).

    python examples/deploy/memory.py --size 8B --tp 2 --context 32768 --requests 16

Numbers are those of the published config.json files (vocab 131072, 32 query / 8 KV heads of
head_dim 128, untied output head; layers/hidden/intermediate per size), in bf16 (2 bytes).
Tensor parallelism shards every weight matrix (SGLang also splits the embedding and head over
the vocabulary) and the KV heads (8 heads: TP up to 8 without replication). A TRIMODE server
also reserves step slots per running request: SGLang keeps 2 x W KV slots past each request's
committed prefix every decode step, W = `speculative_num_draft_tokens` = the most tokens a
request emits per step: B, or 2 B with `--trimode-fill-in on` (the default). Not counted here:
activations, logits, CUDA graphs and NCCL buffers, which live in the 1 - --mem-fraction-static
left over.
"""

import argparse

GIB = 1024**3
BYTES = 2  # bf16
VOCAB, HEADS, KV_HEADS, HEAD_DIM = 131072, 32, 8, 128
SIZES = {"3B": (26, 3072, 9216), "8B": (34, 4096, 14336), "14B": (40, 5120, 16384)}


def parameters(size: str) -> int:
    layers, hidden, inter = SIZES[size]
    attn = hidden * HEADS * HEAD_DIM * 2 + hidden * KV_HEADS * HEAD_DIM * 2  # q, o; k, v
    mlp = 3 * hidden * inter  # gate, up, down
    norms = 2 * hidden
    return 2 * VOCAB * hidden + layers * (attn + mlp + norms) + hidden  # embed + head + final norm


def kv_bytes_per_token(size: str, tp: int) -> int:
    kv_heads = max(1, KV_HEADS // tp)  # TP > 8 replicates KV heads
    return 2 * SIZES[size][0] * kv_heads * HEAD_DIM * BYTES  # K and V, every layer


def report(size: str, tp: int, context: int, requests: int, width: int) -> str:
    weights = parameters(size) * BYTES / tp / GIB
    kv = requests * context * kv_bytes_per_token(size, tp) / GIB
    reserve = 2 * width if width > 1 else 1  # plain AR (width 1): one slot per step
    slots = requests * reserve * kv_bytes_per_token(size, tp) / GIB
    return (
        f"{size} ({parameters(size) / 1e9:.2f}B params) TP{tp}: weights {weights:.1f} GiB"
        f" + KV {kv:.1f} GiB ({requests} x {context} tokens,"
        f" {kv_bytes_per_token(size, tp) // 1024} KiB/token)"
        f" + step slots {slots:.2f} GiB ({reserve} tokens/request)"
        f" = {weights + kv + slots:.1f} GiB per GPU"
    )


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--context", type=int, required=True, help="--context-length")
    p.add_argument("--requests", type=int, required=True, help="--max-running-requests")
    p.add_argument(
        "--verify-width",
        type=int,
        default=1,
        help="speculative_num_draft_tokens: 1 (AR), B, or 2 B with fill-in",
    )
    a = p.parse_args(argv)
    return report(a.size, a.tp, a.context, a.requests, a.verify_width)


if __name__ == "__main__":
    print(main())
