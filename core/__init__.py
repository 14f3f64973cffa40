"""What the daemon and its clients share: chunk keys, the record format, codecs, buffers, errors.

Nothing here imports grpc, torch, vllm or lmcache.
"""
