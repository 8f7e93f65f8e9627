"""Training data: self-blended pseudo-fakes (SBI) and the augmentations that fakes in the wild undergo."""
