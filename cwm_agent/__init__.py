"""cwm-agent: fix software issues with Meta's Code World Model."""
