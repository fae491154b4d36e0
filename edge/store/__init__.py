"""The disk store: the index, the slice files, the transactions, and upkeep."""
