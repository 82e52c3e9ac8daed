"""Text on the host (tokenizers) and on the device (token byte tables, detokenisation)."""
