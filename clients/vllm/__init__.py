"""vLLM integration: `kv_connector_module_path="kvbucket.clients.vllm"`, `kv_connector="KVBucketConnector"`.

The connector imports vLLM; `kvbucket.clients.vllm.plan` (its planning rules) does not.
"""

__all__ = ["KVBucketConnector"]


def __getattr__(name: str):
    if name == "KVBucketConnector":
        from kvbucket.clients.vllm.connector import KVBucketConnector

        return KVBucketConnector
    raise AttributeError(f"module 'kvbucket.clients.vllm' has no attribute {name!r}")
