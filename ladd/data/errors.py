"""The one exception type the data package raises for bad input."""


class DataError(ValueError):
  """Bad data configuration or data on disk; the message says what to do."""
