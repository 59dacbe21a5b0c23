"""The one exception type users see for mistakes they can fix (bad paths, bad images, bad arguments)."""


class MMClassifierError(ValueError):
    """Something the user gave us cannot be used; the message says what and what to do instead."""
