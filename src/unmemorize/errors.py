"""The one exception type users see: a problem with their input, stated so they can fix it."""


class UnmemorizeError(Exception):
    """Bad input or an unusable artefact (model, data, factors, plan, output folder).

    The CLI prints the message on one line and exits with status 2; the Python API raises it.
    """


MAX_SEED = 2**63 - 1


def check_seed(seed, option: str = "--seed") -> int:
    """Seeds are integers in [0, 2^63 - 1] (what torch's generators accept on every platform)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UnmemorizeError(f"{option} must be an integer in [0, 2^63-1], got {seed!r}")
    return seed
