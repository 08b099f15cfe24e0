"""The error every rke step returns; main() prints it as the final FATA line (exit 1)."""


class RkeError(Exception):
    """An error whose text is exactly what rke would print after `level=fatal msg=`."""
