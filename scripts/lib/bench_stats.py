"""Statistics shared by the benchmark scripts' summaries."""


def pct(values, p):
    """Percentile `p` (0-100) of `values`, linear between ranks as the load-test harness
    reports (numpy's default); None for no values."""
    values = sorted(values)
    if not values: return None
    rank = p / 100 * (len(values) - 1)
    lo, hi = int(rank), min(int(rank) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)
