"""Optimizers (SGD/Adam/AdamW, L-BFGS, Levenberg-Marquardt) and step-size rules."""
