"""The scoring service: the gateway's synchronous HTTP hook (FastAPI)."""
