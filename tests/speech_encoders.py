"""Shared by the speech-encoder tests: the tiny random checkpoint size and one torch thread.

Why: no real wav2vec 2.0 / HuBERT weights exist on these machines, so the encoder tests build tiny
randomly initialised checkpoints with transformers' own classes; they share one size.
"""
from __future__ import annotations

import pytest
import torch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
            num_conv_pos_embeddings=16)


@pytest.fixture(autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny models on short clips: one torch thread is far cheaper than two fighting a loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
