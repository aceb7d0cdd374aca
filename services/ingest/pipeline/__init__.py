"""The ingestion pipeline's pure steps: fetch, extract, normalize, chunk and extract facts.

Each module here is independent of gRPC, storage and crypto, so the inline and the background
path run exactly the same code. Nothing in this package logs document text.
"""
