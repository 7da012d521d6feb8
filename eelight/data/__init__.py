"""Data: WebDataset shards, chat templates, the synthetic probe (docs/DESIGN.md §3)."""
