"""Fine-tune the encoder together with the head: the same masked BCE, gradients through the encoder's pooling.

Slow (a full encoder forward and backward per prompt per epoch); `routoo-fast train` does not do it by default.
"""
from __future__ import annotations

import copy
import time

import numpy as np

from routoo_fast.pool_score import masked_mean
from routoo_fast.train.fit import TrainConfig, TrainHistory, masked_bce, torch_threads

__all__ = ["finetune_encoder", "save_encoder"]


def _pooled_with_grad(encoder, prompts):
    """Masked-mean pooled encoder output [B, D] with gradients flowing into encoder.model (for fine-tuning)."""
    batch = encoder.tokenizer(list(prompts), truncation=True, max_length=encoder.max_length, padding=True,
                              return_tensors="pt")
    attention = batch["attention_mask"].to(encoder.device)
    hidden = encoder.model(input_ids=batch["input_ids"].to(encoder.device), attention_mask=attention).last_hidden_state
    return masked_mean(hidden, encoder.pooling_mask(attention))


def finetune_encoder(encoder, head, prompts, scores, train_idx, val_idx, config: TrainConfig | None = None,
                     epochs: int = 1, batch_size: int = 16, progress: bool = True) -> TrainHistory:
    """Update `encoder.model` (lr = config.encoder_lr) and `head` (lr = config.lr) together, in place, through the
    same masked BCE on raw pooled encodings; keeps the weights of the epoch with the lowest validation loss
    (the starting weights count as epoch -1). Slow: a full encoder forward and backward per prompt per epoch.
    """
    import torch
    from tqdm.auto import tqdm

    config = config if config is not None else TrainConfig()
    prompts = list(prompts)
    y = np.asarray(scores, dtype=np.float32)
    if y.shape[0] != len(prompts):
        raise ValueError(f"scores must have one row per prompt ({len(prompts)}), got shape {y.shape}")
    train_ix, val_ix = np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)
    y_all = torch.from_numpy(np.nan_to_num(y, nan=0.0))
    m_all = torch.from_numpy((~np.isnan(y)).astype(np.float32))
    model = encoder.model
    history = TrainHistory()
    start = time.perf_counter()

    def val_loss() -> float:
        model.eval()
        head.eval()
        if val_ix.size == 0:
            return float("nan")
        total, count = 0.0, 0.0
        with torch.no_grad():
            for s in range(0, val_ix.size, 64):
                rows = val_ix[s:s + 64]
                logits = head(_pooled_with_grad(encoder, [prompts[i] for i in rows]).float())
                m = m_all[rows]
                total += float(masked_bce(logits, y_all[rows], m)) * float(m.sum())
                count += float(m.sum())
        return total / max(count, 1.0)

    with torch.random.fork_rng(devices=[]), torch_threads(config.num_threads):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.AdamW([{"params": list(model.parameters()), "lr": config.encoder_lr, "weight_decay": 0.0},
                                 {"params": list(head.parameters()), "lr": config.lr, "weight_decay": 0.0}])
        best_loss = val_loss()
        best = (copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))
        for epoch in tqdm(range(epochs), desc="fine-tuning encoder", unit="epoch", disable=not progress):
            model.train()
            head.train()
            order = train_ix[torch.randperm(train_ix.size, generator=gen).numpy()]
            total, count = 0.0, 0.0
            for s in range(0, order.size, batch_size):
                rows = order[s:s + batch_size]
                m = m_all[rows]
                if m.sum() == 0:
                    continue
                loss = masked_bce(head(_pooled_with_grad(encoder, [prompts[i] for i in rows]).float()), y_all[rows], m)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * float(m.sum())
                count += float(m.sum())
            history.train_loss.append(total / max(count, 1.0))
            loss_now = val_loss()
            history.val_loss.append(loss_now)
            if not val_ix.size or loss_now < best_loss:
                best_loss, history.best_epoch = loss_now, epoch
                best = (copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))
        model.load_state_dict(best[0])
        head.load_state_dict(best[1])
    model.eval()
    head.eval()
    history.seconds = time.perf_counter() - start
    return history


def save_encoder(encoder, directory):
    """Write `encoder`'s (fine-tuned) weights and tokenizer to `directory` atomically; returns an Encoder on it."""
    from routoo_fast._atomic import atomic_directory
    from routoo_fast.encoder import Encoder

    with atomic_directory(directory) as tmp:
        encoder.model.save_pretrained(tmp, safe_serialization=True)
        encoder.tokenizer.save_pretrained(tmp)
    return Encoder(path=str(directory), max_length=encoder.max_length, batch_size=encoder.batch_size,
                   pooling=encoder.pooling)
