"""The one exception type users see: a problem with their input, stated so they can fix it."""


class UnmemorizeError(Exception):
    """Bad input or an unusable artefact (model, data, factors, plan, output folder).

    The CLI prints the message on one line and exits with status 2; the Python API raises it.
    """
