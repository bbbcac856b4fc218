"""A tiny encoder folder, distinct from the shipped one: a 1-layer BERT with hidden size 32 (random weights, seed 0)
and the shipped all-MiniLM-L6-v2 tokenizer, saved the way a user's own Hugging Face encoder folder is."""
import shutil
from pathlib import Path

TINY_HIDDEN = 32


def make_tiny_encoder(folder) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from routoo_fast.encoder import default_model_path

    folder = Path(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=TINY_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    shipped = Path(default_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (shipped / name).is_file():
            shutil.copy(shipped / name, folder / name)
    return folder
