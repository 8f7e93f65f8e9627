"""ViT encoders, masking strategies and the real-face pretraining objectives (MAE, CRFR-P, self-distillation)."""
