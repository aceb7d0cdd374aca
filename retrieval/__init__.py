"""Retrieval building blocks shared by the ingest and the query service.

`embeddings` turns text into dense vectors with the bundled all-MiniLM-L6-v2 model; `terms`
turns text into the BM25 terms of the sparse vector. Ingest and query must use the same code
for both, or stored and query vectors stop matching. Nothing here logs text.
"""
