"""The reference IM gateway: the default target of demos and tests (see docs/protocol.md)."""
