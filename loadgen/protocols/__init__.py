"""Protocol profiles: how the agent speaks to a gateway it does not know (docs/protocols.md)."""
