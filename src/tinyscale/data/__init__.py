"""Corpora: the story world, LLM-written stories, ingested files; tokenization and shards."""
