"""Batches of encoded examples as padded tensors (dynamic padding)."""
from __future__ import annotations

import torch

from .text import Encoded


def collate(examples: list[Encoded], pad_id: int, device: torch.device) -> dict:
    """Pad to the longest example of the batch (dynamic padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    # segment ids where any example has them (a mixed-task batch may hold single texts and pairs)
    types = torch.zeros((len(examples), width), dtype=torch.long) if any(e.token_type_ids for e in examples) else None
    for i, e in enumerate(examples):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, :len(e.input_ids)] = 1
        if types is not None and e.token_type_ids:
            types[i, :len(e.token_type_ids)] = torch.tensor(e.token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask,
             "position": torch.tensor([e.position for e in examples], dtype=torch.long)}
    if types is not None:
        batch["token_type_ids"] = types
    if examples[0].soft_positions:
        batch["soft_positions"] = torch.tensor([e.soft_positions for e in examples], dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}
