"""Data files: readers of released benchmark formats and generators that write them."""
