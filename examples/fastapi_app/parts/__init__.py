"""parts: a FastAPI example for gcfork (see README.md)."""
