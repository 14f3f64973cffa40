"""Fixtures for server tests. The S3 server fixtures (`s3_process`, `s3_server`, `s3_bucket`) live in
tests/conftest.py, shared with tests/integration."""
