"""The offline indexer: sources -> pipeline -> shard writer."""
