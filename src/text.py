"""How messages name several things: the first few, then how many more."""


def listed(items, limit: int = 5) -> str:
    """'a, b, c' for up to ``limit`` items, then ' and N more'."""
    items = [str(item) for item in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
