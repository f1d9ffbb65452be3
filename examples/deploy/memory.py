"""GPU memory per GPU of a Nemotron-Labs-Diffusion deployment: weights (+ drafter) + KV cache
(+ TRIMODE slots), and what eager forwards hold outside that.

    python examples/deploy/memory.py --size 8B --tp 2 --context 32768 --requests 16 \
        --verify-width 64 --drafter-rank 0 --cuda-graph off

Numbers are those of the published config.json files (vocab 131072, 32 query / 8 KV heads of
head_dim 128, untied output head; layers/hidden/intermediate per size), in bf16 (2 bytes).
Tensor parallelism shards every weight matrix (SGLang also splits the embedding and head over
the vocabulary) and the KV heads (8 heads: TP up to 8 without replication). A TRIMODE server
also reserves step slots per running request: SGLang keeps 2 x W KV slots past each request's
committed prefix every decode step, W = `speculative_num_draft_tokens` = the most tokens a
request emits per step: B, or 2 B with `--trimode-fill-in on` (the default).

The drafter (`--drafter-rank R`, the checkpoint's `linear_spec_lora/`: LoRA on every layer's
`o_proj`, r 128 in the vendor's checkpoints) adds `layers x R x (4096 / TP + hidden)` bf16
numbers per GPU next to the weights: at TP > 1 each rank holds its columns of LoRA A (those of its
`o_proj` input slice) and all of B.

`--cuda-graph off` (the TRIMODE worker runs every forward eager, so its recipes pass
`--disable-cuda-graph`): the line adds the fp32 logits one eager forward holds, requests x W
rows x vocab x 4 bytes, twice (the logits and one same-sized temporary); W bounds the rows (a
forward holds at most B rows of logits per request). `--cuda-graph on` (plain AR): the captured
graphs are not counted. Either way these, activations and NCCL buffers live in the
1 - --mem-fraction-static that SGLang leaves outside its weights + KV pool.
"""

import argparse

GIB = 1024**3
BYTES = 2  # bf16
LOGIT_BYTES = 4  # fp32 logits
LOGIT_COPIES = 2  # the logits and one same-sized temporary (a softmax, a processed copy)
VOCAB, HEADS, KV_HEADS, HEAD_DIM = 131072, 32, 8, 128
SIZES = {"3B": (26, 3072, 9216), "8B": (34, 4096, 14336), "14B": (40, 5120, 16384)}


def parameters(size: str) -> int:
    layers, hidden, inter = SIZES[size]
    attn = hidden * HEADS * HEAD_DIM * 2 + hidden * KV_HEADS * HEAD_DIM * 2  # q, o; k, v
    mlp = 3 * hidden * inter  # gate, up, down
    norms = 2 * hidden
    return 2 * VOCAB * hidden + layers * (attn + mlp + norms) + hidden  # embed + head + final norm


def drafter_parameters(size: str, rank: int, tp: int = 1) -> int:
    """LoRA on every layer's o_proj, per GPU: A [rank, heads x head_dim / tp] (sharded like
    o_proj's input) and B [hidden, rank] (whole on every rank)."""
    layers, hidden, _ = SIZES[size]
    return layers * rank * (HEADS * HEAD_DIM // tp + hidden)


def kv_bytes_per_token(size: str, tp: int) -> int:
    kv_heads = max(1, KV_HEADS // tp)  # TP > 8 replicates KV heads
    return 2 * SIZES[size][0] * kv_heads * HEAD_DIM * BYTES  # K and V, every layer


def eager_logits_gib(requests: int, width: int) -> float:
    """fp32 logits (and one same-sized temporary) of one eager forward: requests x W rows."""
    return requests * width * VOCAB * LOGIT_BYTES * LOGIT_COPIES / GIB


def report(
    size: str,
    tp: int,
    context: int,
    requests: int,
    width: int,
    drafter_rank: int = 0,
    cuda_graph: str = "off",
) -> str:
    weights = parameters(size) * BYTES / tp / GIB
    drafter = drafter_parameters(size, drafter_rank, tp) * BYTES / GIB
    kv = requests * context * kv_bytes_per_token(size, tp) / GIB
    reserve = 2 * width if width > 1 else 1  # plain AR (width 1): one slot per step
    slots = requests * reserve * kv_bytes_per_token(size, tp) / GIB
    lora = f" + drafter {drafter:.2f} GiB (LoRA r{drafter_rank})" if drafter_rank else ""
    if cuda_graph == "off":
        rest = (
            f"; eager, no CUDA graphs: logits {eager_logits_gib(requests, width):.2f} GiB"
            f" ({requests} x {width} rows) outside"
        )
    else:
        rest = "; CUDA graphs on: captured outside, not counted"
    return (
        f"{size} ({parameters(size) / 1e9:.2f}B params) TP{tp}: weights {weights:.1f} GiB{lora}"
        f" + KV {kv:.1f} GiB ({requests} x {context} tokens,"
        f" {kv_bytes_per_token(size, tp) // 1024} KiB/token)"
        f" + step slots {slots:.2f} GiB ({reserve} tokens/request)"
        f" = {weights + drafter + kv + slots:.1f} GiB per GPU{rest}"
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
    p.add_argument("--drafter-rank", type=int, default=0, help="LoRA rank of the drafter (0: none)")
    p.add_argument(
        "--cuda-graph",
        choices=("on", "off"),
        default="off",
        help="off: eager forwards (TRIMODE, --disable-cuda-graph); on: plain AR with graphs",
    )
    a = p.parse_args(argv)
    return report(a.size, a.tp, a.context, a.requests, a.verify_width, a.drafter_rank, a.cuda_graph)


if __name__ == "__main__":
    print(main())
