"""Reports: the results table, the Markdown report and its plot."""
