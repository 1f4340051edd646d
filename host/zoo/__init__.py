"""Reference networks and the data sets they train on (offline: nothing is downloaded)."""
