"""Bad input gets a ValueError naming the field and the fix, before any forward runs."""

import pytest

from sglang_trimode import TriModeEngine
from sglang_trimode.reference.tiny import make_tiny_model


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine(make_tiny_model(seed=0))


@pytest.mark.parametrize(
    "prompts, kwargs, match",
    [
        (
            [[5, 6]],
            dict(mode="beam"),
            r"mode must be one of \['ar', 'diffusion', 'self_spec_linear'",
        ),
        ([[]], {}, r"prompts\[0\] is empty"),
        ([], {}, "prompts must be a non-empty list"),
        ([[5, 3, 6]], {}, r"prompts\[0\] holds the mask token id 3 \(config.mask_token_id\)"),
        ([[5, 999]], {}, "outside the vocabulary"),
        ("hello", {}, "prompts must be a non-empty list"),
        ([[5], "hi"], {}, r"prompts\[1\] must be a list of token ids"),
        ([[5] * 1000], dict(max_new_tokens=100), "exceeds max_position_embeddings 1024"),
        (
            [[5] * 1900],
            dict(max_new_tokens=140, mode="self_spec_quadratic", block_size=16),
            "quadratic look-ahead",
        ),
        ([[5]], dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
        ([[5]], dict(block_size=0), "block_size must be an int >= 1"),
        ([[5]], dict(threshold=1.5), "threshold must be in"),
        ([[5]], dict(temperature=-0.1), "temperature"),
        ([[5]], dict(top_p=2.0), "top_p"),
        ([[5]], dict(acceptance="greedy"), "acceptance must be one of"),
        ([[5], [6]], dict(mode=["ar"]), "mode: got 1 modes for 2 prompts"),
        ([[5], [6]], dict(seed=[1]), "seed: got 1 seeds for 2 prompts"),
        ([[5]], dict(diffusion_steps=0), "diffusion_steps"),
    ],
)
def test_bad_input_names_the_field(engine, prompts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        engine.generate(prompts, **kwargs)


def test_prompt_at_the_position_limit_is_accepted(engine):
    (o,) = engine.generate([[5] * 1016], max_new_tokens=8)
    assert 1 <= len(o.token_ids) <= 8
