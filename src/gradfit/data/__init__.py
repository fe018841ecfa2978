"""Tables (CSV/Parquet, columns), synthetic data, the split, and where the rows live: in memory, torchrun shards, Parquet streams."""
