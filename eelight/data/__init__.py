"""Data: WebDataset shards, chat templates, the synthetic probe (DESIGN.md §3)."""
