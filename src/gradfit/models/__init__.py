"""The model kinds (linear, polynomial, MLP, formula): features, heads, losses, one-pass gradients."""
