"""The offline half's training room: ONE recipe (what `routoo-fast train` runs and what ships), head fitting,
encoder fine-tuning, adding a model to a trained router, and the kNN predictor.

    recipe.py     the shipped recipe: soft targets, a seed ensemble folded into one head, logit shrinkage
    fit.py        train_head: masked BCE, AdamW, early stopping, fixed seeds; merge_heads; TrainConfig
    finetune.py   fine-tune the encoder with the head
    knn.py        KNNPredictor and choose_knn_k (k chosen on val)
    metrics.py    per-model ROC-AUC, Brier, expected calibration error of predictions
    add_model.py  add one LLM to a trained router from K labelled prompts
    pipeline.py   table in, router directory out

Imports from routoo_fast.data and the live path only (the arrows point down: evaluation -> train -> data).
Submodules are imported where used: this package pulls in torch.
"""
