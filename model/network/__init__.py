"""The U-Net: blocks, heads, activations, and what running it needs (padding, device)."""
