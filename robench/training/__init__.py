"""Training: the one training loop the recipes plug into."""
