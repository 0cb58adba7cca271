"""A bidirectional GRU over a batch of padded conversations, in operations ONNX can export.

The conversation-level layer for long calls (issue 31): on IEMOCAP, frozen-encoder probes put a BiGRU over the
utterance vectors ~9 W-F1 above the single Transformer layer (docs/BENCHMARKS.md). `nn.GRU(bidirectional=True)` on a
padded batch would start its backward pass in the padding; `pack_padded_sequence` avoids that but does not export.
Here the backward GRU reads each conversation reversed within its own length, so padding only ever comes after a
conversation's last real turn, where it cannot reach a real position.
"""

from __future__ import annotations

import torch
from torch import nn


class BiGRU(nn.Module):
    """(B, L, H) utterance vectors, (B, L) mask -> (B, L, H): H/2 forward states next to H/2 backward ones."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        if hidden % 2:
            raise ValueError(f"a BiGRU context needs an even width, got {hidden}")
        self.forward_gru = nn.GRU(hidden, hidden // 2, batch_first=True)
        self.backward_gru = nn.GRU(hidden, hidden // 2, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, L)
        # Position t of the reversed sequence is real turn length-1-t; padding stays where it is.
        order = torch.where(steps < lengths, lengths - 1 - steps, steps).unsqueeze(-1)  # (B, L, 1)
        ahead = self.forward_gru(x)[0]
        behind = self.backward_gru(x.gather(1, order.expand(-1, -1, x.shape[-1])))[0]
        return torch.cat([ahead, behind.gather(1, order.expand(-1, -1, behind.shape[-1]))], dim=-1)
