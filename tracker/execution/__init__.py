"""Where measured runs happen: a child process per run or one that keeps a model loaded, and the
nodes of a Ray cluster.
"""
