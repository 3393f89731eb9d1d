"""Report cards built from the files a run wrote."""
