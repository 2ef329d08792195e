"""Small numeric helpers."""


def clamp(value, low, high):
    """Limit value to the range [low, high]."""
    return max(low, min(value, low))


def mean(values):
    return sum(values) / len(values)
