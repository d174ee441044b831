"""Token layouts: a vision transformer's layers output (batch, tokens, width), a few prefix tokens (the
class token) and then one token per patch in row-major order. Every view that expects feature maps
(batch, channels, height, width) sees the patch tokens reshaped to the patch grid through `as_maps`;
the class token is kept apart where a view needs it (`prefix_tokens`). A model without a patch grid
(a CNN, an MLP) passes through unchanged."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Layout(NamedTuple):
    prefix: int  # class and register tokens before the patch tokens
    grid: tuple[int, int]  # patches per column and per row

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]


def token_layout(model: nn.Module) -> Layout | None:
    """The layout of a timm-style vision transformer (patch_embed.grid_size, num_prefix_tokens), or of a model that
    states its own (`token_layout()`, cvaudit.net.hf), or None for a model whose layers are not token sequences."""
    model = getattr(model, "model", model)  # a PixelSpace wraps the model
    if callable(getattr(model, "token_layout", None)):
        return model.token_layout()
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None or not hasattr(model, "blocks"):
        return None
    return Layout(int(getattr(model, "num_prefix_tokens", 0)), (int(grid[0]), int(grid[1])))


def _lead(o: torch.Tensor, layout: Layout | None) -> int | None:
    """How many prefix tokens `o` carries: layout.prefix for a block's output, 0 for the patch embedding's
    (patches only), None if `o` is not a token sequence of this layout."""
    if layout is None or o.dim() != 3:
        return None
    patches = layout.grid[0] * layout.grid[1]
    return {layout.tokens: layout.prefix, patches: 0}.get(o.shape[1])


def is_tokens(o: torch.Tensor, layout: Layout | None) -> bool:
    return _lead(o, layout) is not None


def as_maps(o: torch.Tensor, layout: Layout | None) -> torch.Tensor:
    """(N, T, D) token outputs as (N, D, rows, cols) maps of the patch tokens; anything else unchanged."""
    lead = _lead(o, layout)
    if lead is None:
        return o
    n, _, d = o.shape
    return o[:, lead:].transpose(1, 2).reshape(n, d, *layout.grid)


def prefix_tokens(o: torch.Tensor, layout: Layout | None) -> torch.Tensor | None:
    """(N, prefix * D): the class (and register) tokens of a token output, None if it has none."""
    if not _lead(o, layout):
        return None
    return o[:, :layout.prefix].flatten(1)


def patch_embedding(model: nn.Module) -> str | None:
    """The patch embedding's name (its output: the patch tokens, before any block), None without one."""
    model = getattr(model, "model", model)
    if callable(getattr(model, "patch_embedding_name", None)):
        return model.patch_embedding_name()
    return "patch_embed" if isinstance(getattr(model, "patch_embed", None), nn.Module) else None


def blocks(model: nn.Module) -> list[str]:
    """The transformer blocks' names, first to last (empty for a model without `blocks`)."""
    model = getattr(model, "model", model)
    if callable(getattr(model, "block_names", None)):
        return model.block_names()
    seq = getattr(model, "blocks", None)
    return [f"blocks.{i}" for i in range(len(seq))] if isinstance(seq, (nn.Sequential, nn.ModuleList)) else []
